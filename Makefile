# herd: `make cluster` runs a three-node cluster here, `make test` runs every test.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build build-linux test check check-deploy cluster bench bench-proxy vagrant-up clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/herd ./cmd/herd

# gofmt, vet, then the race-enabled tests of every package (the end-to-end
# suite in cluster-test/ builds bin/herd itself).
test: check check-deploy
	$(GO) test -race -count=1 -timeout 15m ./...

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# ruby -c Vagrantfile, shellcheck, systemd-analyze verify (installs the tools
# from Debian's packages when run as root).
check-deploy: build
	./scripts/check-deploy.sh

# Lifecycle benchmarks (formation, join, replacement): medians of 5 runs on
# real node processes, printed as a table. Not part of `make test`.
bench:
	./bench/lifecycle.sh

# Proxy throughput: wrk against the hello backend directly, through nginx,
# through Go's stock httputil.ReverseProxy and through herd's gateway; medians
# over BENCH_ROUNDS (3) rounds of BENCH_DURATION (10s), JSON in BENCH_OUT
# (/tmp/herd-bench-proxy.json). Installs wrk and nginx-light when missing.
bench-proxy: build
	./bench/proxy.sh

# A static linux/amd64 binary for the VMs.
build-linux:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -ldflags "$(LDFLAGS)" -o bin/herd ./cmd/herd

# Three VMs on a private network running the systemd unit in deploy/.
vagrant-up: build-linux
	vagrant up

cluster: build
	./scripts/cluster.sh

clean:
	rm -rf bin data
