// Package services holds herd's built-in service handlers (hello, echo) and
// the Host that serves them side by side on the node's service port, each
// under its own path prefix, and registers one instance of each in the
// registry through a small Registrar interface. It does not know how the
// registry stores instances, and it serves only; routing is the gateway's.
//
// With Config.TLS (the node's --internal-tls) it serves HTTPS with the node
// certificate, requires a cluster client certificate, and registers its
// instances with TLS set: only cluster members' gateways reach it.
package services
