#!/usr/bin/env bash
# The registry at scale, on a real three-node cluster of real processes
# (127.0.11.1-3; a fourth node joins later): registrations per second
# through the agent API against raw etcd puts with a lease on the same
# cluster, over the same mutual TLS (a client certificate from `herd tls
# cert create`), at 1 and 16 clients in alternating rounds; then BENCH_COUNT
# (10000) registrations in 200 services through node1: how long, until
# node3's catalog holds them all, node3's heap before and after, the
# gateway's p50/p99 with 10 instances and with all of them, how long a new
# node takes to be synced, and how long node1 takes to register them all
# again after a restart. JSON lines go to BENCH_OUT
# (/tmp/herd-bench-registry.json), a table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${BENCH_COUNT:-10000}
rounds=${BENCH_ROUNDS:-3}
duration=${BENCH_DURATION:-5s}
out=${BENCH_OUT:-/tmp/herd-bench-registry.json}
name=bench-registry
prefix=127.0.11.
node_args=()
# shellcheck source=bench/cluster.sh
. bench/cluster.sh

ready() { # N: /readyz answers 200
	curl -fsS -o /dev/null --max-time 1 --cacert "$tmp/node1/tls/ca.pem" "https://$(ip "$1"):8500/readyz" 2>/dev/null
}
wait_ready() { # N SECONDS
	local i
	for ((i = 0; i < $2 * 20; i++)); do
		ready "$1" && return 0
		kill -0 "${pids[$1]}" 2>/dev/null || { echo "node$1 exited:" >&2; tail -20 "$tmp/node$1.log" >&2; exit 1; }
		sleep 0.05
	done
	echo "node$1 not ready in $2s" >&2
	tail -20 "$tmp/node$1.log" >&2
	exit 1
}

echo "bench-registry: starting three nodes on $(ip 1)-3..." >&2
go build -o "$tmp/regload" ./bench/regload
start 1
for _ in $(seq 1 100); do [ -s "$tmp/node1/join-token" ] && break; sleep 0.1; done
join=(--join "$(ip 1)" --join-token-file "$tmp/node1/join-token")
start 2 "${join[@]}"
start 3 "${join[@]}"
for n in 1 2 3; do wait_ready "$n" 90; done
# Three voters before measuring.
for _ in $(seq 1 600); do
	voters=$("$bin" members --api "https://$(ip 1):8500" --data-dir "$tmp/node1" 2>/dev/null | grep -c ' voter ' || true)
	[ "$voters" = 3 ] && break
	sleep 0.1
done
"$bin" tls cert create --client --name bench --data-dir "$tmp/node1" --out "$tmp/cert" >/dev/null
load() { "$tmp/regload" -ca "$tmp/node1/tls/ca.pem" -cert "$tmp/cert/bench.pem" -key "$tmp/cert/bench-key.pem" \
	-token "$tmp/node1/acl-token" -api "https://$(ip 1):8500" -far "https://$(ip 3):8500" -etcd "https://$(ip 1):2379" \
	-gateway "http://$(ip 2):8080" "$@"; }
heap() { # N: Go heap in use, MB
	api "$1" /metrics | awk '/^go_memstats_heap_inuse_bytes/ { printf "%.1f", $2 / 1048576 }'
}
: >"$out"
echo "bench-registry: registrations/s, API vs raw etcd ($rounds rounds of $duration)..." >&2
load -mode rate -rounds "$rounds" -duration "$duration" | tee -a "$out" >&2
echo "bench-registry: a registration through node1 until node2's and node3's catalogs list it, while 16 clients register..." >&2
load -mode visibility -fars "https://$(ip 2):8500,https://$(ip 3):8500" | tee -a "$out" >&2
load -mode latency | sed 's/"latency"/"latency_small"/' | tee -a "$out" >&2
heap_before=$(heap 3)

echo "bench-registry: $count registrations in 200 services through node1..." >&2
t0=$(now)
load -mode bulk -count "$count" | tee -a "$out" >&2
until [ "$(load -mode count)" = "$count" ]; do sleep 0.05; done
far=$(since "$t0")
heap_after=$(heap 3)
load -mode latency | sed 's/"latency"/"latency_large"/' | tee -a "$out" >&2

echo "bench-registry: a fourth node joins..." >&2
t0=$(now)
start 4 "${join[@]}"
wait_ready 4 90
until [ "$("$tmp/regload" -ca "$tmp/node1/tls/ca.pem" -token "$tmp/node1/acl-token" -far "https://$(ip 4):8500" -mode count)" = "$count" ]; do sleep 0.05; done
joined=$(since "$t0")

echo "bench-registry: node1 restarts (a graceful stop takes its instances out)..." >&2
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true
until [ "$(load -mode count)" = 0 ]; do sleep 0.05; done
t0=$(now)
start 1
until [ "$(load -mode count)" = "$count" ]; do sleep 0.05; done
again=$(since "$t0")
printf '{"measure":"far_catalog","seconds":%s}\n{"measure":"heap_mb","node":"node3","before":%s,"after":%s}\n{"measure":"new_node_synced","seconds":%s}\n{"measure":"restart_reregistered","count":%s,"seconds":%s}\n' \
	"$far" "$heap_before" "$heap_after" "$joined" "$count" "$again" | tee -a "$out" >&2

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(what, c):
    return statistics.median(r["per_s"] for r in rows if r["measure"] == "rate" and r["what"] == what and r["clients"] == c)
print("\nregistrations/s (median)   raw etcd put+lease   agent API   API/raw")
for c in (1, 16):
    raw, a = med("raw", c), med("api", c)
    print(f"  {c:2d} client(s)             {raw:12.0f}   {a:9.0f}   {a/raw:7.2f}")
get = {r["measure"]: r for r in rows}
v = get["visibility"]
print(f"\na registration through node1 while {v['load_clients']} clients register: acknowledged after p50 {v['put_p50_ms']} ms, p99 {v['put_p99_ms']} ms;")
print(f"  then in node2's and node3's catalogs after p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")
b = get["bulk"]
print(f"\n{b['count']} registrations (16 clients, {b['services']} services): {b['seconds']:.1f} s through node1; node3's catalog holds them all after {get['far_catalog']['seconds']} s")
h = get["heap_mb"]
print(f"node3's Go heap: {h['before']} MB before, {h['after']} MB after ({h['after'] - h['before']:.1f} MB for the instances, etcd member included)")
s, l = get["latency_small"], get["latency_large"]
print(f"gateway GET /hello/ (one client): p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms with the built-in instances; p50 {l['p50_ms']} ms, p99 {l['p99_ms']} ms with {b['count']} more in the catalog")
print(f"a new node synced (process start to its catalog holding all): {get['new_node_synced']['seconds']} s")
r = get["restart_reregistered"]
print(f"node1 restarted: all {r['count']} instances back in node3's catalog {r['seconds']} s after the process started")
print("\n(2 cores, every node and the load generator on one machine: only same-run ratios compare)")
PY
