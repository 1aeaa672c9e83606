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
// foreign Origin, JSON bodies for every change. Behind that, every /v1
// route declares what it needs (acl.go): a request is taken for an API
// token (looked up by hash in a token set mirrored from the registry by a
// watch, so revocation reaches every node at once and no request reads the
// registry), for an operator when it presents a cluster certificate (nodes
// and the CLI with --data-dir never carry a user token), or for anonymous
// (refused, but for reads with --anonymous-read); 401 or 403 otherwise,
// logged and counted. The node that creates a cluster makes its management
// token and publishes its hash once (publishManagementToken).
//
// The node runs the health checks of the instances it owns (checks.go,
// with the health package): the registrar tells the runner of every
// instance it holds, the runner says when a check changes status, and a
// writer puts the new statuses into the instance's registry value
// (Registrar.Update), retrying until it lands; only changes are written.
//
// Maintenance (maint.go) is the node's own state, kept in its data dir: the
// registrar's Overlay stamps it on every instance value the node writes,
// and Registrar.Reapply rewrites the instances a change concerns, so
// gateways skip them from their next catalog update. Service definitions
// on disk (configdir.go) are registered like the built-ins and follow
// their files on every reload. Blocking queries (blocking.go) wait on the
// catalog's per-service index, with no registry read.
package node
