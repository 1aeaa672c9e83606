#!/usr/bin/env bash
# The cost of the agent API's access control: registrations/s and reads/s
# with ACLs on (a service token looked up and checked on every request) and
# off (the check bypassed) on one real node (embedded etcd, HTTPS, 16
# clients), in alternating rounds (on, off, off, on, ...) of the same run
# (node/acl_bench_test.go).
# Prints the median of each and the on/off ratio. BENCH_ROUNDS (5) and
# BENCH_TIME (3s) set the rounds and their length.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-5}
benchtime=${BENCH_TIME:-3s}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
HERD_BENCH_ROUNDS=$rounds go test -run '^$' -bench '^BenchmarkAPI(Register|Read)$' -benchtime "$benchtime" ./node | tee "$out"
awk '
/^BenchmarkAPI/ {
	for (i = 1; i <= NF; i++) if ($(i+1) == "req/s") v = $i
	split($1, p, "-"); name = p[1]; sub(/#[0-9]+$/, "", name)
	vals[name] = vals[name] " " v
}
function median(s,   a, n, i, j, t) {
	n = split(s, a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
	printf "\n%-22s %12s %12s %8s\n", "agent API, 16 clients", "ACL on", "ACL off", "on/off"
	split("Register Read", kinds, " ")
	for (k = 1; k <= 2; k++) {
		on = median(vals["BenchmarkAPI" kinds[k] "/acl=on"]); off = median(vals["BenchmarkAPI" kinds[k] "/acl=off"])
		printf "%-22s %10.0f/s %10.0f/s %8.3f\n", tolower(kinds[k]) "s", on, off, on / off
	}
}' "$out"
