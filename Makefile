# herd: `make cluster` runs a three-node cluster here, `make test` runs every test.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test check unit e2e cluster clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/herd ./cmd/herd

# gofmt, vet, then the race-enabled tests of every package (the end-to-end
# suite in cluster-test/ builds bin/herd itself).
test: check
	$(GO) test -race -count=1 -timeout 15m ./...

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

cluster: build
	./scripts/cluster.sh

clean:
	rm -rf bin data
