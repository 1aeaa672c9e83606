#!/usr/bin/env bash
# Lifecycle benchmarks: formation of three nodes started at once, a 4th
# node's join (each with TLS, as users get it, and with --insecure, in the
# same run), and the replacement of a killed voter. Each scenario runs 5
# times on real node processes (cluster-test's harness) and reports the
# median. Not asserted anywhere; compare against the goals in the table.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(go test -run '^$' -bench 'Formation|Join|Replacement' -benchtime 1x -timeout 20m ./cluster-test/ 2>&1) || { echo "$out" >&2; exit 1; }
get() { echo "$out" | awk -v m="$1" '{for (i = 2; i <= NF; i++) if ($i == m) print $(i-1)}' | tail -1; }

printf '%-44s %12s %12s %10s\n' "scenario (median of 5, this machine)" "TLS (s)" "plaintext" "goal"
printf '%-44s %12s %12s %10s\n' "formation: 3 nodes at once -> all routing" "$(get 's/formation-tls(median)')" "$(get 's/formation-plaintext(median)')" "< 3"
printf '%-44s %12s %12s %10s\n' "join: 4th node start -> serving" "$(get 's/join-tls(median)')" "$(get 's/join-plaintext(median)')" "< 2"
printf '%-44s %12s %12s %10s\n' "replacement: kill -9 -> 3 voters, - timeout" "$(get 's/replacement-minus-timeout(median)')" "" "-"
