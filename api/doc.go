// Package api holds herd's public wire types: the JSON documents served by the
// agent API (/v1/...), stored in the registry, and read by the CLI, the chaos
// suite and the benchmarks. It has no behaviour beyond validation and imports
// nothing from the rest of herd, so any package (and any outside program) may
// depend on it without pulling in etcd, gossip or the gateway.
package api
