// Package registry is herd's control plane. It owns the embedded etcd member
// (bootstrap of a new cluster, join as a learner and promotion, restart from
// its data dir) and the registry client: one lease per node with the node's
// instances under it, re-granted and re-registered forever after any loss, and
// a watch-backed in-memory Catalog that answers every lookup without a network
// call.
//
// It knows nothing of gossip, the gateway or the services: the node hands it
// what it learned from gossip (the peers' client URLs) and reads back what it
// needs (catalog snapshots, member roles).
//
// Every link is mutual TLS when MemberConfig.TLS is set (herd always sets
// it but in --insecure mode): the member's client and peer URLs are https
// and accept only certificates of the cluster CA, and NewClient dials with
// the node's certificate. Secrets keeps the cluster's identity material
// (CA key, join secret, gossip keyring) under /herd/secure/, opaque here.
// ACL keeps the agent API's tokens (hashes, never secrets; opaque here)
// under /herd/acl/tokens/<name>, and /herd/acl/bootstrapped once the first
// management token was made; FollowTokens mirrors them. The catalog and
// the token mirror share one list-then-watch loop (follower, follow.go).
//
// The Registrar's writes run concurrently, one key at a time (opLock); a
// lease change (a new lease, every instance written under it, 128 to a
// transaction) takes the lock alone. Batch makes many changes in one
// transaction. A registration kept across restarts (RegisterKept, Batch)
// is also written, in the same transaction, under the node's own kept
// prefix with no lease (kept.go); a starting node reads its prefix once.
// On a voter, the registrar's key-value calls go to the member in-process
// (LocalClient, localkv.go) rather than over TLS on loopback. Update
// rewrites one held instance in place (check status changes); the
// RegistrarConfig.Overlay stamps what the node decides (maintenance) on
// every value written, and Reapply rewrites what an Overlay change
// concerns, 128 to a transaction, taking the lock alone.
//
// The catalog keeps, per service, the revision of its last change (its
// index: forward only, also across a re-list, where a service that did not
// change keeps its index) and wakes the Waits on that service alone:
// blocking queries cost nothing until their service changes.
//
// Keys: /herd/services/<service>/<instance-id> -> JSON api.Instance (under
// the owning node's lease); /herd/kept/<node>/<service>/<instance-id> ->
// the same, no lease.
package registry
