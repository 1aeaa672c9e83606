// Package node assembles one herd node from its parts (gossip, the registry
// member and client, the service host, the gateway and the agent API) and
// owns their start order, their shutdown order and the data dir. It is the
// only package that sees all the others; they see none of each other.
package node
