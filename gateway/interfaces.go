package gateway

import "github.com/herdcluster/herd/api"

// Catalog answers which instances a service has. Implementations are safe for
// concurrent use, answer from memory without blocking, and return a slice the
// caller must not modify (it is shared with other readers).
type Catalog interface {
	// Instances returns the registered instances of service; nil or empty
	// when the service has no registration.
	Instances(service string) []api.Instance
}

// Liveness tells what gossip knows of a node. Implementations are safe for
// concurrent use and answer from memory without blocking.
type Liveness interface {
	// NodeStatus returns api.StatusAlive, api.StatusSuspect, api.StatusDead or
	// api.StatusLeft, or "" when the node is unknown to gossip (an unknown
	// node is treated as alive: gossip may simply not have heard of it yet).
	NodeStatus(node string) string
}
