// Package acl is herd's access control for the agent API: API tokens, the
// policies they carry, and the in-memory token set every node checks
// requests against.
//
// A token is a random secret ("herd-acl1.<64 hex digits>") with a unique
// name, one or more policies and an optional expiry. The registry keeps
// only its SHA-256 (a 256-bit random secret needs no slow hash: nothing
// can be guessed from it), so a stolen snapshot yields no usable token; an
// operator sees a secret only when it is made.
//
// Policies are few:
//
//	read              members, services, instances, metrics
//	service:<prefix>  register and deregister instances of the services whose
//	                  names start with <prefix>; and read
//	operator          everything: leave, force-leave, snapshot, keyring, join
//	                  token rotation, API tokens
//
// A request needs one of three things (Need): read, the service policy of
// one service, or operator. The package knows nothing of HTTP or etcd: the
// node reads tokens from the request, keeps a Set current from a watch on
// the registry's token prefix, and asks Allows.
package acl
