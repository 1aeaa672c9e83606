#!/usr/bin/env bash
# What the chaos suite needs: root (network namespaces, veth pairs, a
# bridge, iptables rules), ip and tc (iproute2) and iptables. Installs the
# Debian packages when they are missing; fails with the reason otherwise.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
	echo "the chaos suite needs root: it creates network namespaces, veth pairs, a bridge and iptables rules; run it as root (sudo make chaos)" >&2
	exit 1
fi
need=()
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
if [ "${#need[@]}" -gt 0 ]; then
	if ! command -v apt-get >/dev/null; then
		echo "the chaos suite needs ${need[*]} and this machine has no apt-get to install them" >&2
		exit 1
	fi
	echo "installing ${need[*]} for the chaos suite" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" >/dev/null
fi
