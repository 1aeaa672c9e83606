#!/usr/bin/env bash
# Starts a three-node herd on this machine: node1 on 127.0.0.1 bootstraps,
# node2 and node3 on 127.0.0.2 and 127.0.0.3 join it. Data lives under
# ./data/<node>. Each log line is prefixed with its node's name. Ctrl-C
# stops all three gracefully (a second Ctrl-C forces them). Each node runs in
# its own session so that a Ctrl-C reaches it once, through this script.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=./bin/herd
[ -x "$bin" ] || { echo "cluster: $bin is missing; run 'make build'" >&2; exit 1; }

pids=()
stopping=0
# shellcheck disable=SC2317 # invoked by the trap below
stop() {
	if [ "$stopping" = 1 ]; then
		echo "cluster: forcing stop" >&2
		kill -KILL "${pids[@]}" 2>/dev/null || true
		exit 1
	fi
	stopping=1
	echo "cluster: stopping the three nodes gracefully" >&2
	kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

start() {
	local name=$1 ip=$2
	shift 2
	setsid "$bin" agent --name "$name" --bind "$ip" --data-dir "data/$name" "$@" \
		> >(sed -u "s/^/[$name] /") 2> >(sed -u "s/^/[$name] /" >&2) &
	pids+=($!)
}

start node1 127.0.0.1
start node2 127.0.0.2 --join 127.0.0.1
start node3 127.0.0.3 --join 127.0.0.1

# Tell the user what to do once every gateway routes.
(
	for _ in $(seq 1 120); do
		ok=0
		for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
			curl -fsS -o /dev/null "http://$ip:8500/readyz" 2>/dev/null && ok=$((ok + 1))
		done
		if [ "$ok" = 3 ]; then
			cat >&2 <<'MSG'

  herd is up: three nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3.
  Try:
    curl 127.0.0.1:8080/hello/        # through node1's gateway
    curl 127.0.0.2:8080/hello/        # node2 (answers come from every node in turn)
    curl 127.0.0.3:8080/echo/a?b=c    # node3
    bin/herd members                  # the nodes, their roles and the leader
    bin/herd services hello           # the instances of hello
  Ctrl-C stops the cluster gracefully.

MSG
			exit 0
		fi
		sleep 0.5
	done
	echo "cluster: the nodes are not all ready after 60s; see the logs above" >&2
) &

status=0
for pid in "${pids[@]}"; do
	wait "$pid" || status=$?
done
# wait returns early when a trapped signal arrives; wait again for the exits.
for pid in "${pids[@]}"; do
	while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done
done
exit "$status"
