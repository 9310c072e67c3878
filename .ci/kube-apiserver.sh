#!/usr/bin/env bash
# Provide what internal/peers' tests run against: a real kube-apiserver
# v1.37.2 at $(go env GOPATH)/bin/kube-apiserver-v1.37.2 and Debian's etcd.
# Idempotent: each step is skipped when its result is already there, so CI
# keeps the binary between runs like helm (the file name carries the
# version: a binary built this way reports no version of its own). The first
# build downloads about 1 GiB of modules and takes a few minutes on 2 cores.
#
# k8s.io/kubernetes is not meant to be imported: its go.mod points its
# staging modules at ./staging/..., so `go install ...@v1.37.2` is refused.
# The build uses a throwaway module that pins each staging module to the
# matching v0.37.2 release instead.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"

version=v1.37.2
staging=v0.37.2
bin="$(go env GOPATH)/bin/kube-apiserver-$version"

if ! command -v etcd >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
fi
command -v etcd >/dev/null

if [[ ! -x "$bin" ]]; then
	d=$(mktemp -d)
	trap 'rm -rf "$d"' EXIT
	cd "$d"
	printf 'module kubeapiserver\n\ngo 1.26\n' >go.mod
	printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' >main.go
	GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$version"
	M="$(go env GOMODCACHE)/k8s.io/kubernetes@$version/go.mod"
	for m in $(grep -E '=> ./staging' "$M" | awk '{print $1}' | sort -u); do
		echo "replace $m => $m $staging" >>go.mod
	done
	GOFLAGS=-mod=mod go mod tidy
	mkdir -p "$(dirname "$bin")"
	# Build beside the target and rename, so an interrupted build never
	# leaves a truncated binary that the check above would accept.
	go build -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver
	mv "$bin.tmp" "$bin"
fi
echo "kube-apiserver: $bin; etcd: $(command -v etcd)"
