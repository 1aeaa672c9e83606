# herd: `make cluster` runs a three-node cluster here, `make test` runs every test.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build build-linux test check check-deploy cluster bench bench-proxy bench-failover bench-acl bench-registry bench-scale bench-checks chaos chaos-smoke chaos-cleanup chaos-deps vagrant-up clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/herd ./cmd/herd

# gofmt, vet, then the race-enabled tests of every package (the end-to-end
# suite in cluster-test/ builds bin/herd itself).
# As root it also runs chaos-smoke (network namespaces need root).
test: check check-deploy
	$(GO) test -race -count=1 -timeout 15m ./...
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory chaos-smoke; else echo "make test: chaos-smoke skipped: it needs root (network namespaces, iptables)"; fi

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

# Access control's cost: agent API registrations/s and reads/s with ACLs on
# and off, alternating rounds on one real node; medians and ratios.
bench-acl:
	./bench/acl.sh

# The registry at scale: API registrations/s vs raw etcd puts (1 and 16
# clients), 10,000 registrations, a far node's catalog, heap, gateway
# latency at 10 vs 10,000 instances, a new node's sync, a restart's
# re-registration. Real processes on 127.0.11.1-4.
bench-registry: build
	./bench/registry.sh

# Health checks' cost: 1,000 http checks every 10 s on one real node (CPU
# against the same instances without checks, registry writes per minute,
# runs and transitions), and the gateway's herd/direct ratio with the
# checks off and on. Needs wrk (bench-proxy installs it).
bench-checks: build
	./bench/checks.sh

# Many nodes: BENCH_NODES (25) real processes on 127.0.12.x (5 voters, the
# rest spares): formation, gossip convergence, every gateway to every node,
# a killed voter replaced.
bench-scale: build
	./bench/scale.sh

# The chaos suite: real nodes in network namespaces, crashes, pauses,
# partitions, churn; linearizability and no-loss checks. Needs root.
# CHAOS_FAULTS: all, smoke, or names (kill-leader,pause-2x,isolate,split,...);
# CHAOS_NODES: 3, 5 or 3,5; CHAOS_SEED (0: from the clock) and CHAOS_SEEDS
# (runs per node count, seeds SEED, SEED+1, ...) replay a schedule;
# CHAOS_HOLD: how long crashes and partitions last. Reports, histories and
# timelines go to cluster-test/chaos/artifacts/chaos/.
CHAOS_FAULTS ?= all
CHAOS_NODES ?= 3,5
CHAOS_SEED ?= 0
CHAOS_SEEDS ?= 1
CHAOS_HOLD ?= 30s
CHAOS_ARGS = -chaos.nodes $(CHAOS_NODES) -chaos.seed $(CHAOS_SEED) -chaos.seeds $(CHAOS_SEEDS) -chaos.hold $(CHAOS_HOLD)
chaos: chaos-deps
	$(GO) test -count=1 -timeout 0 -v -run '^TestChaos$$' ./cluster-test/chaos/ -args -chaos.faults $(CHAOS_FAULTS) $(CHAOS_ARGS)

# The subset make test runs as root: kill -9 of the leader, a pause, an
# isolated node and a 2|1 split, on 3 nodes (about 3 minutes).
chaos-smoke: chaos-deps
	$(GO) test -count=1 -timeout 10m -v -run '^TestChaos$$' ./cluster-test/chaos/ -args -chaos.faults smoke -chaos.nodes 3 -chaos.seed $(CHAOS_SEED)

# Removes what an interrupted chaos run left: node processes, namespaces,
# links, data dirs.
chaos-cleanup: chaos-deps
	$(GO) run ./cluster-test/chaos/cmd/herd-chaos cleanup

# Root, ip, iptables and tc; installs iproute2 and iptables when missing.
chaos-deps:
	@./scripts/chaos-deps.sh

# Failover: 1000 GET/s through node1 while node2 is killed or hung (SIGSTOP
# 10 s), or node2 and node3 are hung (no quorum); errors and p50/p99/max per
# phase, against the goals. About 4 minutes.
bench-failover:
	./bench/failover.sh

# A static linux/amd64 binary for the VMs.
build-linux:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -ldflags "$(LDFLAGS)" -o bin/herd ./cmd/herd

# Three VMs on a private network running the systemd unit in deploy/; the
# founders' join token is made once and kept in .vagrant/herd-join-token.
vagrant-up: build-linux
	@mkdir -p .vagrant && [ -s .vagrant/herd-join-token ] || (umask 077 && bin/herd token generate > .vagrant/herd-join-token)
	vagrant up

cluster: build
	./scripts/cluster.sh

clean:
	rm -rf bin data
