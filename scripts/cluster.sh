#!/usr/bin/env bash
# Starts a three-node herd on this machine: node1 on 127.0.0.1 bootstraps
# the cluster (its CA, join token and gossip key), node2 and node3 on
# 127.0.0.2 and 127.0.0.3 join it with node1's join token. Data lives under
# ./data/<node> (HERD_CLUSTER_DATA moves it; HERD_CLUSTER_BIN names another
# binary than ./bin/herd). Each log line is prefixed with its node's name. Ctrl-C
# stops all three gracefully and exits 0 (a second Ctrl-C forces them).
# Each node runs in its own session so that a Ctrl-C reaches it once,
# through this script.
set -euo pipefail

cd "$(dirname "$0")/.."

# A Ctrl-C goes to the terminal's foreground process group, which is
# make's: make then dies of the SIGINT (status 130) whatever this script
# does. So, on a terminal, the script runs in a process group of its own
# that owns the terminal while it runs: the Ctrl-C reaches only it, it stops
# the nodes and exits 0, and so does make. (perl's POSIX module does the
# tcsetpgrp; without perl, or off a terminal, the script runs as it is.)
if [ -t 0 ] && [ -z "${HERD_CLUSTER_FOREGROUND:-}" ] && command -v perl >/dev/null; then
	export HERD_CLUSTER_FOREGROUND=1
	exec perl -MPOSIX -e '
		$SIG{TTOU} = "IGNORE";
		my $parent = getpgrp();
		my $pid = fork();
		die "cluster: fork: $!\n" unless defined $pid;
		if ($pid == 0) {
			setpgid(0, 0);
			tcsetpgrp(0, getpgrp());
			$SIG{TTOU} = "DEFAULT";
			exec(@ARGV) or die "cluster: exec: $!\n";
		}
		setpgid($pid, $pid);
		waitpid($pid, 0);
		my $status = $?;
		tcsetpgrp(0, $parent);
		exit(($status & 127) ? 128 + ($status & 127) : $status >> 8);
	' "$0" "$@"
fi

bin=${HERD_CLUSTER_BIN:-./bin/herd}
data=${HERD_CLUSTER_DATA:-data}
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
	# The log filters ignore Ctrl-C: they must outlive the nodes' last
	# lines, or a node stopping gracefully would die of SIGPIPE.
	setsid "$bin" agent --name "$name" --bind "$ip" --data-dir "$data/$name" "$@" \
		> >(trap '' INT TERM; exec sed -u "s/^/[$name] /") 2> >(trap '' INT TERM; exec sed -u "s/^/[$name] /" >&2) &
	pids+=($!)
}

token_file=$data/node1/join-token
start node1 127.0.0.1
# node1 writes its join token when it creates the cluster (at once) or
# already has it (a restart): the others join with it.
for _ in $(seq 1 100); do
	[ -s "$token_file" ] && break
	kill -0 "${pids[0]}" 2>/dev/null || { echo "cluster: node1 exited; see its log above" >&2; exit 1; }
	sleep 0.1
done
[ -s "$token_file" ] || { echo "cluster: node1 wrote no join token in 10s; see its log above" >&2; exit 1; }
HERD_JOIN_TOKEN=$(cat "$token_file")
export HERD_JOIN_TOKEN
start node2 127.0.0.2 --join 127.0.0.1
start node3 127.0.0.3 --join 127.0.0.1
unset HERD_JOIN_TOKEN

ca=$(cd "$data/node1/tls" && pwd)/ca.pem
acl_token=$(cd "$data/node1" && pwd)/acl-token
# Tell the user what to do once every node is ready.
(
	for _ in $(seq 1 120); do
		ok=0
		for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
			curl -fsS -o /dev/null --cacert "$ca" "https://$ip:8500/readyz" 2>/dev/null && ok=$((ok + 1))
		done
		if [ "$ok" = 3 ]; then
			cat >&2 <<MSG

  herd is up: three nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, with mutual TLS
  between them and encrypted gossip. The gateways speak plain HTTP; the agent
  API speaks HTTPS with the cluster's certificate and wants an API token. In
  another terminal:

    export HERD_CA_FILE=$ca
    export HERD_TOKEN=\$(cat $acl_token)   # the management token (operator)
    curl 127.0.0.1:8080/hello/        # through node1's gateway
    curl 127.0.0.2:8080/hello/        # node2 (answers come from every node in turn)
    curl 127.0.0.3:8080/echo/a?b=c    # node3
    curl --cacert \$HERD_CA_FILE -H "Authorization: Bearer \$HERD_TOKEN" https://127.0.0.1:8500/v1/members
    bin/herd members                  # the nodes, their roles and the leader
    bin/herd services hello           # the instances of hello
    bin/herd acl token create --name ci --policy service:web   # a narrower token
    bin/herd token show --data-dir $data/node1   # the join token for more nodes

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
	while :; do
		rc=0
		wait "$pid" || rc=$?
		# A trapped signal (Ctrl-C) interrupts wait with a status over 128
		# while the node is still stopping: wait for it again.
		kill -0 "$pid" 2>/dev/null && continue
		[ "$rc" = 0 ] || status=$rc
		break
	done
done
exit "$status"
