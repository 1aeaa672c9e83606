#!/usr/bin/env bash
# Proxy throughput benchmark: the same backend (herd's hello service on one
# node's service port) reached five ways, measured with wrk:
#
#   direct  wrk -> 127.0.0.61:9000/hello/                        (the backend alone)
#   nginx   wrk -> nginx 127.0.0.62:8081 -> 127.0.0.61:9000        (keepalive upstream)
#   stock   wrk -> bench/stockproxy 127.0.0.63:8082 -> :9000       (httputil.ReverseProxy, default transport)
#   gomin   wrk -> bench/minproxy 127.0.0.64:8083 -> :9000         (the least a Go proxy can do: raw bytes, no features)
#   herd    wrk -> herd gateway 127.0.0.61:8080 -> :9000            (the node's own gateway)
#   itls    wrk -> herd gateway 127.0.0.65:8080 -> :9000 over TLS   (a second node, --internal-tls: the hop a
#                                                                 peer's gateway makes, with node certificates)
#
# Both herd nodes run as users get them (secure by default: the agent API
# is HTTPS; the readiness probe trusts each node's own CA).
#
# wrk -t2 -c64 --latency, a 2 s warm-up of each target, then BENCH_ROUNDS
# rounds (default 3) of BENCH_DURATION (default 10s) per target, alternating
# direct, nginx, stock, gomin, herd, itls within each round so that drift hits all
# alike.
# Prints medians over rounds (req/s, p50, p99) and herd's ratios as a table,
# and writes them as JSON to ${BENCH_OUT:-/tmp/herd-bench-proxy.json}.
#
# Needs bin/herd (make build), go, curl; installs wrk and nginx-light with
# apt-get when they are missing (as root). Runs nginx from a temp directory
# with its own config, pid file and temp paths: /etc/nginx and the system
# nginx service are never used. Only loopback traffic. Not part of make test.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

# ---- settings ---------------------------------------------------------------

duration=${BENCH_DURATION:-10s}
rounds=${BENCH_ROUNDS:-3}
out=${BENCH_OUT:-/tmp/herd-bench-proxy.json}
threads=2
connections=64
warmup=2s

herd_ip=127.0.0.61
nginx_addr=127.0.0.62:8081
stock_addr=127.0.0.63:8082
gomin_addr=127.0.0.64:8083
itls_ip=127.0.0.65
backend=$herd_ip:9000
herd_bin=bin/herd

targets=(direct nginx stock gomin herd itls)
declare -A url=(
	[direct]="http://$backend/hello/"
	[nginx]="http://$nginx_addr/hello/"
	[stock]="http://$stock_addr/hello/"
	[gomin]="http://$gomin_addr/hello/"
	[herd]="http://$herd_ip:8080/hello/"
	[itls]="http://$itls_ip:8080/hello/"
)
declare -A what=(
	[direct]="wrk straight to the backend"
	[nginx]="nginx, keepalive 256 upstream"
	[stock]="httputil.ReverseProxy, default transport"
	[gomin]="bench/minproxy, Go floor, no features"
	[herd]="herd gateway"
	[itls]="herd gateway, --internal-tls hop"
)

die() {
	echo "bench/proxy.sh: $*" >&2
	exit 1
}

[[ $duration =~ ^[1-9][0-9]*[smh]?$ ]] || die "BENCH_DURATION must be a duration like 10s, 3 or 1m, got '$duration'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer, got '$rounds'"

# ---- tools ------------------------------------------------------------------

[[ -x $herd_bin ]] || die "$herd_bin not found: run 'make build' first"
command -v go >/dev/null || die "go not found in PATH (needed to build bench/stockproxy and bench/minproxy)"

nginx_bin=$(command -v nginx || true)
[[ -z $nginx_bin && -x /usr/sbin/nginx ]] && nginx_bin=/usr/sbin/nginx
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[[ -n $nginx_bin ]] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]} > 0)); then
	[[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: install them (apt-get install -y ${missing[*]}) or run this as root"
	command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them with"
	echo "installing ${missing[*]} (apt-get)..." >&2
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
	[[ -x $nginx_bin ]] || die "nginx still not found after installing nginx-light"
fi

# ---- ports ------------------------------------------------------------------

# A TCP connect that succeeds means something already listens there (also a
# wildcard listener on that port, which would make our bind fail too).
port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
for hp in "$herd_ip:7946" "$herd_ip:2379" "$herd_ip:2380" "$herd_ip:8080" "$herd_ip:8500" "$herd_ip:9000" \
	"$itls_ip:7946" "$itls_ip:2379" "$itls_ip:2380" "$itls_ip:8080" "$itls_ip:8500" "$itls_ip:9000" \
	"$nginx_addr" "$stock_addr" "$gomin_addr"; do
	if port_busy "${hp%:*}" "${hp##*:}"; then
		die "$hp is already in use (see: ss -ltnp 'sport = :${hp##*:}'); stop whatever listens there and retry"
	fi
done

# ---- processes and cleanup --------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/herd-bench-proxy.XXXXXX")
herd_pid='' itls_pid='' nginx_pid='' stock_pid='' gomin_pid=''

# stop NAME PID SIGNAL: signal, wait up to 15 s, then SIGKILL; always reap.
stop() {
	local name=$1 pid=$2 sig=$3 i
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill "-$sig" "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "bench/proxy.sh: $name (pid $pid) did not stop within 15 s, killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
}

show_log() { # NAME FILE: the tail of a log, when there is one
	if [[ -s $2 ]]; then
		echo "---- $1 (last 20 lines of $2) ----" >&2
		tail -n 20 "$2" >&2
	fi
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if ((rc != 0)); then
		show_log herd "$tmp/herd.log"
		show_log "herd (internal TLS)" "$tmp/itls.log"
		show_log nginx "$tmp/nginx/error.log"
		show_log stockproxy "$tmp/stockproxy.log"
		show_log minproxy "$tmp/minproxy.log"
	fi
	stop nginx "$nginx_pid" QUIT
	stop stockproxy "$stock_pid" TERM
	stop minproxy "$gomin_pid" TERM
	stop herd "$herd_pid" TERM
	stop "herd (internal TLS)" "$itls_pid" TERM
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_http NAME PID URL SECONDS [CURL-ARGS...]: until URL answers 200, or
# fail when the process exits or time runs out.
wait_http() {
	local name=$1 pid=$2 u=$3 secs=$4 i code
	shift 4
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited before $u answered"
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$u" || true)
		[[ $code == 200 ]] && return 0
		sleep 0.1
	done
	die "$name: $u did not answer 200 within ${secs}s (last status: ${code:-none})"
}

# The herd nodes, each a one-node cluster of its own: hello and echo on
# :9000, gateway on :8080; the second with --internal-tls. HERD_* variables
# of the caller's environment are dropped so that none (HERD_JOIN) changes
# what is started.
start_herd() { # NAME IP LOG ARGS...
	local name=$1 ip=$2 log=$3
	shift 3
	(
		while read -r v; do unset "$v"; done < <(compgen -e | grep '^HERD_' || true)
		exec "$herd_bin" agent --name "$name" --bind "$ip" --data-dir "$tmp/$name" --log-level warn "$@"
	) >"$log" 2>&1 &
}
echo "starting herd nodes on $herd_ip and $itls_ip (--internal-tls)..." >&2
start_herd bench "$herd_ip" "$tmp/herd.log"
herd_pid=$!
start_herd bench-itls "$itls_ip" "$tmp/itls.log" --internal-tls
itls_pid=$!
wait_http "herd (readyz)" "$herd_pid" "https://$herd_ip:8500/readyz" 60 --cacert "$tmp/bench/tls/ca.pem"
wait_http "herd (gateway)" "$herd_pid" "${url[herd]}" 30
wait_http "herd --internal-tls (readyz)" "$itls_pid" "https://$itls_ip:8500/readyz" 60 --cacert "$tmp/bench-itls/tls/ca.pem"
wait_http "herd --internal-tls (gateway)" "$itls_pid" "${url[itls]}" 30

# The stock proxy, built from bench/stockproxy.
echo "building and starting bench/stockproxy on $stock_addr..." >&2
go build -o "$tmp/stockproxy" ./bench/stockproxy
"$tmp/stockproxy" -listen "$stock_addr" -target "http://$backend" >"$tmp/stockproxy.log" 2>&1 &
stock_pid=$!
wait_http stockproxy "$stock_pid" "${url[stock]}" 15

# The Go floor, built from bench/minproxy.
echo "building and starting bench/minproxy on $gomin_addr..." >&2
go build -o "$tmp/minproxy" ./bench/minproxy
"$tmp/minproxy" -listen "$gomin_addr" -target "$backend" >"$tmp/minproxy.log" 2>&1 &
gomin_pid=$!
wait_http minproxy "$gomin_pid" "${url[gomin]}" 15

# nginx, entirely inside $tmp/nginx: config, pid, error log, temp paths.
echo "starting nginx on $nginx_addr..." >&2
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
# bench/proxy.sh: nginx as a reverse proxy in front of herd's service port.
user root;
daemon off;
worker_processes auto;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;

    upstream herd_backend {
        server $backend;
        keepalive 256;
    }

    server {
        listen $nginx_addr;
        location / {
            proxy_pass http://herd_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
nginx_args=(-p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log")
"$nginx_bin" -t -q "${nginx_args[@]}" || die "nginx rejected its config ($tmp/nginx/nginx.conf)"
"$nginx_bin" "${nginx_args[@]}" >>"$tmp/nginx/error.log" 2>&1 &
nginx_pid=$!
wait_http nginx "$nginx_pid" "${url[nginx]}" 15

wait_http direct "$herd_pid" "${url[direct]}" 5

# ---- measure ----------------------------------------------------------------

# parse: wrk --latency output on stdin -> "req/s p50_ms p99_ms errors requests";
# errors are non-2xx/3xx answers plus socket errors (connect, read, write,
# timeout). Latency units us, ms, s, m, h are converted to ms.
parse() {
	awk '
	function ms(v,   n, u) {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") return n / 1000
		if (u == "ms") return n
		if (u == "s") return n * 1000
		if (u == "m") return n * 60000
		if (u == "h") return n * 3600000
		return -1
	}
	$1 == "Requests/sec:" { rps = $2 }
	$1 == "50%" { p50 = ms($2) }
	$1 == "99%" { p99 = ms($2) }
	$2 == "requests" && $3 == "in" { total = $1 }
	/Non-2xx or 3xx responses:/ { errs += $NF }
	/Socket errors:/ { for (i = 3; i <= NF; i += 2) { x = $(i + 1); sub(/,/, "", x); errs += x } }
	END {
		if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
		printf "%s %.3f %.3f %d %d\n", rps, p50, p99, errs, total
	}'
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
ncpu=$(nproc)

echo "warm-up: ${warmup} per target..." >&2
for t in "${targets[@]}"; do
	wrk -t"$threads" -c"$connections" -d"$warmup" "${url[$t]}" >/dev/null
done

results=$tmp/results # lines: target round rps p50 p99 errors requests
: >"$results"
for ((r = 1; r <= rounds; r++)); do
	for t in "${targets[@]}"; do
		echo "round $r/$rounds: $t (${duration})..." >&2
		wrk -t"$threads" -c"$connections" -d"$duration" --latency "${url[$t]}" >"$tmp/wrk.out" 2>&1 ||
			{ cat "$tmp/wrk.out" >&2; die "wrk failed against $t (${url[$t]})"; }
		line=$(parse <"$tmp/wrk.out") || { cat "$tmp/wrk.out" >&2; die "could not parse wrk's output for $t"; }
		echo "$t $r $line" >>"$results"
	done
done

# ---- report -----------------------------------------------------------------

# med TARGET COLUMN: the median of a column (3 rps, 4 p50, 5 p99) over rounds.
med() {
	awk -v t="$1" -v c="$2" '$1 == t { print $c }' "$results" | sort -g |
		awk '{ a[NR] = $1 } END { if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f\n", m }'
}
errsum() { awk -v t="$1" '$1 == t { s += $6 } END { print s + 0 }' "$results"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "null" }'; }

declare -A rps p50 p99 errs
for t in "${targets[@]}"; do
	rps[$t]=$(med "$t" 3)
	p50[$t]=$(med "$t" 4)
	p99[$t]=$(med "$t" 5)
	errs[$t]=$(errsum "$t")
done
r_nginx=$(ratio "${rps[herd]}" "${rps[nginx]}")
r_direct=$(ratio "${rps[herd]}" "${rps[direct]}")
r_stock=$(ratio "${rps[herd]}" "${rps[stock]}")
r_gomin=$(ratio "${rps[herd]}" "${rps[gomin]}")
r_floor=$(ratio "${rps[gomin]}" "${rps[nginx]}")
r_p99=$(ratio "${p99[herd]}" "${p99[nginx]}")
r_itls=$(ratio "${rps[itls]}" "${rps[herd]}")
r_itls_p99=$(ratio "${p99[itls]}" "${p99[herd]}")

echo
echo "Proxy throughput: wrk -t$threads -c$connections -d$duration --latency, median of $rounds round(s), backend herd hello on $backend"
echo
printf '| %-7s | %-40s | %10s | %8s | %8s | %6s | %8s |\n' target path "req/s" "p50 ms" "p99 ms" errors "vs nginx"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "---------" "------------------------------------------" "-----------:" "---------:" "---------:" "-------:" "---------:"
for t in "${targets[@]}"; do
	printf '| %-7s | %-40s | %10.0f | %8.3f | %8.3f | %6d | %7sx |\n' "$t" "${what[$t]}" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" \
		"${errs[$t]}" "$(ratio "${rps[$t]}" "${rps[nginx]}")"
done
echo
echo "herd throughput: ${r_nginx}x nginx, ${r_direct}x direct, ${r_stock}x stock, ${r_gomin}x the Go floor" \
	"(which is ${r_floor}x nginx); herd p99 is ${r_p99}x nginx's"
echo "internal TLS: the gateway with a TLS hop to the service host runs at ${r_itls}x the plaintext hop's req/s, p99 ${r_itls_p99}x"
echo
echo "caveat: nproc=$ncpu, load average at start $load_start; wrk, nginx, the stock proxy, the herd gateway and the" \
	"backend all share the same $ncpu cores over loopback, so these numbers compare the proxies, they are not capacity."
load1=${load_start%% *}
if awk -v l="$load1" -v n="$ncpu" 'BEGIN { exit !(l + 0 > n / 2) }'; then
	echo "warning: the 1-minute load average was $load1 at start: other work was running, expect noisy numbers."
fi

# JSON, written by hand (no jq needed).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then commit+="-dirty"; fi
mkdir -p "$(dirname "$out")"
{
	printf '{\n'
	printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf '  "commit": "%s",\n' "$commit"
	printf '  "machine": {"nproc": %d, "loadavg_start": "%s", "note": "load generator, proxies and backend share the same cores over loopback"},\n' "$ncpu" "$load_start"
	printf '  "method": {"tool": "%s", "threads": %d, "connections": %d, "duration": "%s", "rounds": %d, "warmup": "%s", "order": ["direct", "nginx", "stock", "gomin", "herd", "itls"], "statistic": "median over rounds"},\n' \
		"$(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }')" "$threads" "$connections" "$duration" "$rounds" "$warmup"
	printf '  "targets": {\n'
	n=0
	for t in "${targets[@]}"; do
		n=$((n + 1))
		printf '    "%s": {"url": "%s", "what": "%s", "rps": %s, "p50_ms": %s, "p99_ms": %s, "errors": %d, "runs": [' \
			"$t" "${url[$t]}" "${what[$t]}" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" "${errs[$t]}"
		awk -v t="$t" '$1 == t { printf "%s{\"round\": %d, \"rps\": %s, \"p50_ms\": %s, \"p99_ms\": %s, \"errors\": %d, \"requests\": %d}", sep, $2, $3, $4, $5, $6, $7; sep = ", " }' "$results"
		if ((n < ${#targets[@]})); then printf ']},\n'; else printf ']}\n'; fi
	done
	printf '  },\n'
	printf '  "ratios": {"herd_nginx_rps": %s, "herd_direct_rps": %s, "herd_stock_rps": %s, "herd_gomin_rps": %s, "gomin_nginx_rps": %s, "herd_nginx_p99": %s, "itls_herd_rps": %s, "itls_herd_p99": %s}\n' \
		"$r_nginx" "$r_direct" "$r_stock" "$r_gomin" "$r_floor" "$r_p99" "$r_itls" "$r_itls_p99"
	printf '}\n'
} >"$out"
echo "results written to $out"

# The hedge rate at steady state: hedging (on by default) needs a second
# instance, so one more hello instance on the same backend is registered,
# and one more round runs through the gateway; the share of its requests
# hedged is read from /metrics.
echo
echo "hedge rate: a second hello instance on the same backend, one ${duration} round through the gateway..." >&2
herd_api() { # METHOD PATH [BODY]
	curl -fsS --max-time 5 --cacert "$tmp/bench/tls/ca.pem" -H "Authorization: Bearer $(cat "$tmp/bench/acl-token")" \
		-X "$1" ${3:+-H 'Content-Type: application/json' --data "$3"} "https://$herd_ip:8500$2"
}
hello=$(herd_api GET /v1/services/hello/instances/bench)
addr=$(python3 -c 'import json,sys; i=json.load(sys.stdin)["instance"]; print(json.dumps({"address": i["address"], "port": i["port"], "path": i.get("path", "")}))' <<<"$hello")
herd_api PUT /v1/services/hello/instances/bench-2 "$addr" >/dev/null
sleep 1 # the catalog and the gateway see it at once; the check passes within 500 ms
hedge_metrics() { # -> "hedges requests"
	herd_api GET /metrics | awk '
		/^herd_gateway_hedges_total\{service="hello"\}/ { h = $2 }
		/^herd_gateway_requests_total\{.*service="hello"/ { r += $2 }
		END { printf "%d %d\n", h, r }'
}
read -r h0 q0 < <(hedge_metrics)
wrk -t"$threads" -c"$connections" -d"$duration" --latency "${url[herd]}" >"$tmp/wrk.out" 2>&1
read -r h1 q1 < <(hedge_metrics)
hedged=$((h1 - h0))
requests=$((q1 - q0))
hedge_share=$(awk -v h="$hedged" -v q="$requests" 'BEGIN { if (q > 0) printf "%.4f", h / q; else print "null" }')
echo "hedge rate at steady state (wrk -c$connections, two instances, --hedge-after auto): $hedged of $requests requests hedged ($hedge_share)"
printf '{"hedged": %d, "requests": %d, "share": %s}\n' "$hedged" "$requests" "$hedge_share" >"${out%.json}-hedges.json"

# Allocations per proxied request: a GET through the gateway's own server to
# a local backend, minus the same GET straight to the backend.
echo
echo "allocations per request (go test -bench 'FrontProxy|FrontDirect' ./gateway):"
go test -run '^$' -bench 'BenchmarkFront(Proxy|ProxyInternalTLS|Direct)$' -benchtime 20000x ./gateway >"$tmp/allocs.out" 2>&1 ||
	{ cat "$tmp/allocs.out" >&2; die "the allocation benchmark failed"; }
awk '$1 ~ /^BenchmarkFront/ { for (i = 2; i < NF; i++) { if ($(i + 1) == "allocs/op") a[$1] = $i; if ($(i + 1) == "ns/op") t[$1] = $i } }
	END {
		for (k in a) { if (k ~ /InternalTLS/) { s = a[k]; st = t[k] } else if (k ~ /Proxy/) { p = a[k]; pt = t[k] } else d = a[k] }
		printf "  through the gateway %d, straight to the backend %d: the gateway allocates %d per proxied GET\n", p, d, p - d
		printf "  with the --internal-tls hop %d allocations; one client in series: %.1f us per GET, %.1f us plaintext (%.2fx)\n", s, st / 1000, pt / 1000, st / pt
	}' "$tmp/allocs.out"

total_errs=0
for t in "${targets[@]}"; do total_errs=$((total_errs + errs[$t])); done
if ((total_errs > 0)); then
	die "$total_errs failed requests (non-2xx or socket errors): those numbers are not comparable, see the errors column"
fi
