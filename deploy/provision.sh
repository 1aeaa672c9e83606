#!/usr/bin/env bash
# Provisions one herd node (used by the Vagrantfile, usable on any systemd
# host): installs the herd binary and the systemd unit, writes the node's
# environment file and starts the agent.
#
#   provision.sh NAME BIND_IP JOIN_ADDRESSES [HERD_BINARY [UNIT_FILE]]
#
# JOIN_ADDRESSES is the comma-separated list of every node's address (the
# same on every node). HERD_JOIN_TOKEN, from the environment, is the join
# token every node forms the cluster with: make one with `herd token
# generate` and give the same to every node (the Vagrantfile does). It is
# written to /etc/herd/herd.env (0600); a node whose data dir already holds
# its certificates does not need it. HERD_BINARY defaults to /vagrant/bin/herd and
# UNIT_FILE to /vagrant/deploy/herd.service (Vagrant uploads this script on
# its own, so the unit is read from the synced folder).
set -euo pipefail

usage() {
	echo "usage: $0 NAME BIND_IP JOIN_ADDRESSES [HERD_BINARY [UNIT_FILE]]" >&2
	exit 2
}

[ "$#" -ge 3 ] || usage
name=$1
bind=$2
join=$3
binary=${4:-/vagrant/bin/herd}
unit=${5:-/vagrant/deploy/herd.service}

[[ "$name" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || { echo "provision: name '$name' is not a DNS label" >&2; exit 2; }
[ -x "$binary" ] || { echo "provision: $binary is missing; run 'make build' on the host first" >&2; exit 1; }
[ -f "$unit" ] || { echo "provision: unit file $unit is missing" >&2; exit 1; }
token=${HERD_JOIN_TOKEN:-}
if [ -z "$token" ] && [ ! -f /var/lib/herd/tls/node.pem ]; then
	echo "provision: HERD_JOIN_TOKEN is not set: make one with 'herd token generate' and give the same to every node" >&2
	exit 2
fi
case "$token" in
"" | herd1.*) ;;
*) echo "provision: HERD_JOIN_TOKEN is not a herd join token (herd1.…)" >&2; exit 2 ;;
esac

install -m 0755 "$binary" /usr/local/bin/herd
install -d -m 0755 /etc/herd
umask 077
cat > /etc/herd/herd.env <<ENV
HERD_NAME=$name
HERD_BIND=$bind
HERD_JOIN=$join
ENV
[ -z "$token" ] || echo "HERD_JOIN_TOKEN=$token" >> /etc/herd/herd.env
chmod 0600 /etc/herd/herd.env
install -m 0644 "$unit" /etc/systemd/system/herd.service
systemctl daemon-reload
systemctl enable herd.service
systemctl restart herd.service
echo "provision: herd is running on $name ($bind); try: curl $bind:8080/hello/"
echo "provision: the agent API is HTTPS and wants an API token: on a node, herd members works as root (it presents the node's certificate from /var/lib/herd);"
echo "provision: elsewhere export HERD_CA_FILE=/var/lib/herd/tls/ca.pem and HERD_TOKEN (the first node keeps the management token in /var/lib/herd/acl-token)"
