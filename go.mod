module github.com/go-pmtud/go-pmtud

go 1.26.0

require (
	github.com/VictoriaMetrics/metrics v1.45.0
	github.com/florianl/go-nflog/v2 v2.3.0
	github.com/mdlayher/netlink v1.11.2
	golang.org/x/net v0.62.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/mdlayher/socket v0.6.0 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	golang.org/x/sync v0.20.0 // indirect
)
