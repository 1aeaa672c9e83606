# shellcheck shell=bash disable=SC2154 # name, prefix, node_args: set by the sourcing script
# Helpers for the benchmarks that run a cluster of real nodes on loopback
# addresses (bench/registry.sh, bench/scale.sh). Source it after setting:
#   name    the benchmark's name, for messages and the temporary dir
#   prefix  the nodes' address prefix ("127.0.11."): node N is on prefix N
#   node_args  (optional array) extra agent arguments for every node
# It sets bin, tmp and pids, stops every node and removes tmp on exit (kept
# with BENCH_KEEP=1), and defines ip, now, since, start and api.
bin=./bin/herd
[ -x "$bin" ] || { echo "$name: $bin is missing; run make build" >&2; exit 1; }
tmp=$(mktemp -d "/tmp/herd-$name.XXXXXX")
pids=()
cleanup() {
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
	if [ -n "${BENCH_KEEP:-}" ]; then
		echo "$name: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ip() { echo "$prefix$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# start N ARGS...: node N in the background, on its own data dir; HERD_*
# variables of the caller's environment are dropped so that none changes
# what is started.
start() {
	local n=$1
	shift
	(
		while read -r v; do unset "$v"; done < <(compgen -e | grep '^HERD_' || true)
		exec "$bin" agent --name "node$n" --bind "$(ip "$n")" --data-dir "$tmp/node$n" \
			--log-level "${BENCH_LOG_LEVEL:-warn}" "${node_args[@]}" "$@"
	) >>"$tmp/node$n.log" 2>&1 &
	pids[n]=$!
}

# api N PATH: GET PATH from node N's agent API with the management token.
api() {
	curl -fsS --max-time 2 --cacert "$tmp/node1/tls/ca.pem" -H "Authorization: Bearer $(cat "$tmp/node1/acl-token")" \
		"https://$(ip "$1"):8500$2" 2>/dev/null
}
