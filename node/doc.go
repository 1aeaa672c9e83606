// Package node assembles one herd node from its parts (gossip, the registry
// member and client, the service host, the gateway and the agent API) and
// owns their start order, their shutdown order and the data dir. It is the
// only package that sees all the others; they see none of each other.
//
// It also settles the node's identity (identity.go): it creates a new
// cluster's CA, join secret and gossip key, or is admitted to a cluster
// through the join exchange with the token, or loads what its data dir
// holds; it serves the join exchange for others, keeps the token file and
// the keyring in step with the registry, and renews its certificate
// (identity_run.go).
//
// The agent API (api.go) sits behind apiGuard (apiguard.go), which keeps
// browsers from being used against it: only the Hosts it serves, no
// foreign Origin, JSON bodies for every change.
package node
