# The build step is the same `go build` that .ci/run runs.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o /go-pmtud ./cmd/go-pmtud

FROM gcr.io/distroless/static-debian12
COPY --from=build /go-pmtud /go-pmtud
ENTRYPOINT ["/go-pmtud"]
