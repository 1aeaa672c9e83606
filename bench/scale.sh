#!/usr/bin/env bash
# Many nodes on one machine: BENCH_NODES (25) herd nodes on 127.0.12.1-N
# (at most 5 voters, the rest spares), started as an operator would (node1
# creates the cluster, the others join it with its token, all at once),
# measuring: formation (to every node ready and 5 voters), gossip
# convergence (every node sees every other alive), every gateway routing to
# every node's hello, and a voter killed with SIGKILL until 5 voters again
# (--dead-voter-timeout BENCH_DEAD (10s), reported without it). JSON lines
# go to BENCH_OUT (/tmp/herd-bench-scale.json).
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${BENCH_NODES:-25}
dead=${BENCH_DEAD:-10s}
out=${BENCH_OUT:-/tmp/herd-bench-scale.json}
name=bench-scale
prefix=127.0.12.
node_args=(--dead-voter-timeout "$dead")
# shellcheck source=bench/cluster.sh
. bench/cluster.sh
until_true() { # SECONDS WHAT CMD...: poll CMD every 100ms
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	echo "bench-scale: $what not within ${secs}s" >&2
	exit 1
}
test_live_voters() { [ "$(live_voters)" = 5 ]; }

: >"$out"
go build -o "$tmp/regload" ./bench/regload
echo "bench-scale: $nodes nodes on $(ip 1)-$nodes..." >&2
t0ns=$(date +%s%N)
start 1
until_true 30 "node1's join token" test -s "$tmp/node1/join-token"
for ((n = 2; n <= nodes; n++)); do
	start "$n" --join "$(ip 1)" --join-token-file "$tmp/node1/join-token"
done
# Every condition polled at once, each timed from the start (regload
# -mode formation), so that one slow condition does not hold up the others.
apis=$(for ((n = 1; n <= nodes; n++)); do printf 'https://%s:8500,' "$(ip "$n")"; done)
gws=$(for ((n = 1; n <= nodes; n++)); do printf 'http://%s:8080,' "$(ip "$n")"; done)
until_true 30 "node1's management token" test -s "$tmp/node1/acl-token"
"$tmp/regload" -mode formation -start "$t0ns" -apis "${apis%,}" -gateways "${gws%,}" -nodes "$nodes" -voters 5 \
	-ca "$tmp/node1/tls/ca.pem" -token "$tmp/node1/acl-token" | tee -a "$out" >&2

victim_of() { # a voter that is neither node1 nor the leader, by number
	api 1 /v1/members | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(x["name"] for x in m["members"] if x["role"] == "voter" and not x["leader"] and x["name"] != "node1")[4:])'
}
live_voters() { # the voters node1 lists that gossip sees alive
	api 1 /v1/members | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(sum(1 for x in m["members"] if x["role"] == "voter" and x["status"] == "alive"))' 2>/dev/null || echo 0
}
fewer_live_voters() { [ "$(live_voters)" -lt 5 ]; }

# A voter other than node1 dies; a spare replaces it (with spares only).
if ((nodes > 5)); then
	victim=$(victim_of)
	echo "bench-scale: kill -9 node$victim (a voter)..." >&2
	t0=$(now)
	kill -KILL "${pids[victim]}"
	unset "pids[victim]"
	until_true 60 "node$victim seen dead" fewer_live_voters
	dead_s=$(since "$t0")
	until_true 300 "5 live voters again without node$victim" test_live_voters
	replace_s=$(since "$t0")
	printf '{"measure":"replacement","victim":"node%s","seen_dead_s":%s,"seconds":%s,"dead_voter_timeout":"%s"}\n' "$victim" "$dead_s" "$replace_s" "$dead" | tee -a "$out" >&2
else
	echo "bench-scale: $nodes nodes have no spare to replace a voter with; no replacement measured" >&2
	printf '{"measure":"replacement","victim":"","seen_dead_s":0,"seconds":0,"dead_voter_timeout":"%s"}\n' "$dead" >>"$out"
fi

python3 - "$out" "$dead" <<'PY'
import json, sys
rows = {r["measure"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip())}
f, r = rows["formation"], rows["replacement"]
dead = float(sys.argv[2].rstrip("s"))
print(f"\n{f['nodes']} nodes, started at once (node1 first):")
print(f"  every node ready              {f['all_ready_s']:7.1f} s")
print(f"  5 voters                      {f['voters_s']:7.1f} s")
print(f"  gossip converged everywhere   {f['gossip_converged_s']:7.1f} s")
print(f"  every gateway -> every node   {f['every_gateway_every_node_s']:7.1f} s")
if r["victim"]: print(f"kill -9 of voter {r['victim']}: seen dead after {r['seen_dead_s']:.1f} s; 5 live voters again after {r['seconds']:.1f} s ({r['seconds'] - dead:.1f} s besides --dead-voter-timeout {r['dead_voter_timeout']})")
print("(2 cores, every node on one machine)")
PY
