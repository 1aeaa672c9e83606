#!/usr/bin/env bash
# Checks what can be checked of the deployment on this machine: the
# Vagrantfile parses, the shell scripts pass shellcheck, and the systemd unit
# passes systemd-analyze verify. Missing tools are installed from Debian's
# packages when running as root (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ruby >/dev/null || need+=(ruby)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "check-deploy: installing ${need[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null
		apt-get install -y -qq "${need[@]}" >/dev/null
	else
		echo "check-deploy: missing ${need[*]}; install them (Debian: apt-get install ${need[*]}) or run as root" >&2
		exit 1
	fi
fi

echo "check-deploy: ruby -c Vagrantfile"
ruby -c Vagrantfile >/dev/null

echo "check-deploy: shellcheck"
shellcheck scripts/*.sh deploy/*.sh bench/*.sh .ci/run

# systemd-analyze verify checks that ExecStart's binary exists: verify a copy
# of the unit that points at the freshly built binary, with the environment
# file the provisioning script writes.
echo "check-deploy: systemd-analyze verify deploy/herd.service"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$(pwd)/bin/herd
[ -x "$bin" ] || go build -o "$bin" ./cmd/herd
printf 'HERD_NAME=herd1\nHERD_BIND=127.0.0.1\nHERD_JOIN=127.0.0.1\n' > "$tmp/herd.env"
sed -e "s|/usr/local/bin/herd|$bin|" -e "s|/etc/herd/herd.env|$tmp/herd.env|" deploy/herd.service > "$tmp/herd.service"
out=$(systemd-analyze verify "$tmp/herd.service" 2>&1) || { echo "$out" >&2; exit 1; }
# verify also prints warnings without failing; treat those about this unit as errors.
if echo "$out" | grep -F "herd.service" >&2; then
	exit 1
fi
echo "check-deploy: ok"
