#!/usr/bin/env bash
# Health checks' cost on one real node (127.0.13.1): BENCH_COUNT (1000)
# instances with an http check every BENCH_INTERVAL (10s), served by
# bench/checkload. Four windows of BENCH_WINDOW (60s): the instances without
# checks (the baseline), with checks all passing, with a tenth failing, and
# recovering; each reports the node's CPU, registry writes per minute (only
# status transitions should write), check runs and transitions per minute.
# Then the gateway: wrk GET /hello/ through the node's gateway and straight
# to its hello backend (bench-proxy's herd/direct ratio), with the checks
# off and on in alternating BENCH_ROUNDS (3) rounds of BENCH_DURATION (10s).
# JSON lines go to BENCH_OUT (/tmp/herd-bench-checks.json), a table to
# stdout. Needs bin/herd (make build) and wrk (make bench-proxy installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${BENCH_COUNT:-1000}
interval=${BENCH_INTERVAL:-10s}
window=${BENCH_WINDOW:-60s}
rounds=${BENCH_ROUNDS:-3}
duration=${BENCH_DURATION:-10s}
out=${BENCH_OUT:-/tmp/herd-bench-checks.json}
name=bench-checks
prefix=127.0.13.
node_args=()
# shellcheck source=bench/cluster.sh
. bench/cluster.sh
command -v wrk >/dev/null || { echo "$name: wrk is missing (make bench-proxy installs it)" >&2; exit 1; }

go build -o "$tmp/checkload" ./bench/checkload
start 1
for _ in $(seq 1 600); do
	curl -fsS -o /dev/null --max-time 1 --cacert "$tmp/node1/tls/ca.pem" "https://$(ip 1):8500/readyz" 2>/dev/null && break
	kill -0 "${pids[1]}" 2>/dev/null || { echo "node1 exited:" >&2; tail -20 "$tmp/node1.log" >&2; exit 1; }
	sleep 0.1
done
load() { "$tmp/checkload" -api "https://$(ip 1):8500" -ca "$tmp/node1/tls/ca.pem" -token "$tmp/node1/acl-token" -count "$count" -interval "$interval" "$@"; }
: >"$out"
echo "$name: $count instances on node1, four windows of $window (no checks, passing, a tenth failing, recovering)..." >&2
load -mode measure -listen "$(ip 100):0" -pid "${pids[1]}" -window "$window" | tee -a "$out" >&2

echo "$name: the gateway with the checks off and on ($rounds rounds of $duration, wrk -t2 -c64)..." >&2
# Started directly, not through load: $! must be checkload's own PID, for
# the cleanup to stop it.
"$tmp/checkload" -mode serve -count "$count" -listen "$(ip 100):9100" &
pids[100]=$!
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://$(ip 100):9100/h/0" 2>/dev/null && break; sleep 0.1; done
rps() { wrk -t2 -c64 -d "$duration" "$1" | awk '/^Requests\/sec/ { print $2 }'; }
for r in $(seq 1 "$rounds"); do
	for checks in false true; do
		load -mode toggle -listen "$(ip 100):9100" -checks="$checks"
		sleep 1 # the first runs of new checks land within 500 ms
		direct=$(rps "http://$(ip 1):9000/hello/")
		herd=$(rps "http://$(ip 1):8080/hello/")
		printf '{"measure":"gateway","round":%s,"checks":%s,"direct_rps":%s,"herd_rps":%s}\n' "$r" "$checks" "$direct" "$herd" | tee -a "$out" >&2
	done
done

python3 - "$out" "$count" "$interval" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{sys.argv[2]} instances on one node, an http check each every {sys.argv[3]}")
print("window        CPU (cores)   registry writes/min   check runs/min   transitions/min")
for r in rows:
    if r["measure"] == "checks":
        print(f"  {r['phase']:<11} {r['cpu_cores']:10.3f}   {r['registry_writes_per_min']:19.0f}   {r['check_runs_per_min']:14.0f}   {r['transitions_per_min']:15.0f}")
base = next(r for r in rows if r.get("phase") == "nochecks")["cpu_cores"]
steady = next(r for r in rows if r.get("phase") == "steady")["cpu_cores"]
print(f"the checks cost {steady - base:.3f} cores over the baseline without checks ({steady / base if base else float('inf'):.2f}x)")
def med(checks, key):
    return statistics.median(r[key] for r in rows if r["measure"] == "gateway" and r["checks"] == checks)
off, on = med(False, "herd_rps") / med(False, "direct_rps"), med(True, "herd_rps") / med(True, "direct_rps")
print(f"\ngateway GET /hello/, herd/direct (bench-proxy's ratio): {off:.3f} with the checks off, {on:.3f} with them on ({on / off:.3f}x)")
print("(2 cores, the node, the check target and wrk on one machine: only same-run ratios compare)")
PY
