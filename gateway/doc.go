// Package gateway is herd's data plane: it routes
// http://<node>:8080/<service>/<rest> to a live instance of <service> on
// any node.
//
// It reads instances from a Catalog and node liveness from a Liveness view,
// both small interfaces declared here and answered from memory by the node.
// It never imports gossip and never talks to etcd, so the data plane keeps
// routing from the last catalog snapshot while the control plane is in
// trouble.
//
// # One request path
//
// Every request takes the same path, whichever server read it:
//
//	front (front.go)  or  net/http (what the front hands over)
//	  -> serve (handler.go): newRoute, admit, resolve, pick, limitBody,
//	     avoidSaturated, bufferBody, settle; each step one job on the
//	     request's one state, the route (route.go)
//	  -> forward (forward.go): the outbound request, then
//	       express (express.go)  for a GET or HEAD the front read: its first
//	                             attempt written and answered raw
//	       retryTransport (retry.go): retries, hedges (hedge.go), the budget
//	         -> upstream.Client: one pool, every request
//	  -> writeResponse (forward.go), modifyResponse and proxyError
//	     (route.go), or tunnel (tunnel.go) for a WebSocket's 101
//
// The express path is the general one's first attempt, measured faster
// (README, "Its own HTTP/1.1 server"): it keeps the same books (one
// serviceState.begin and attemptMark.end per attempt, outlier reports,
// answer counters) and hands anything it does not serve itself (a failure
// to retry, a 502/503/504, a hedge that is due, an answer it does not
// frame) to retryTransport as the request's first attempt (firstAttempt),
// so retries, hedging, ejection and limits are written once.
//
// # Units and what may import what
//
//   - internal/wire: the HTTP/1.1 rules, each once: hop-by-hop and
//     Connection-listed fields, forwarding fields, token lists, head and
//     field parsing, request-line and field writing, chunked copying,
//     idempotency. Standard library only.
//   - internal/upstream: the upstream client (Client, Conn, the dialer, the
//     body writer): one pool, one response-header timeout mechanism, one
//     stale-connection rule. Imports wire only; knows no route, service
//     or policy.
//   - this package: the front server (front.go, frontwriter.go, conns.go:
//     it serves any http.Handler and names no upstream type, its client
//     watch aborting what a request waits on through waitOn), the request
//     path above, and balancing and outlier state (balance.go, outlier.go,
//     latency.go, stats.go), which every attempt enters and leaves through
//     serviceState.begin and attemptMark.end. It imports upstream and wire;
//     neither imports it.
//
// gin is not used. It did no work here: every route went to one handler,
// its router matches the decoded path where the gateway must route on the
// escaped one ("/a%2Fb/" is not service a), and the front never went
// through it, so a middleware chain in gin would have run for the
// connections net/http serves only. Its engine costs 140 ns and no
// allocation a request (about 0.5% of a proxied GET here); it was removed
// for one path, not for speed, and with it 25 modules.
//
// # Facing strangers
//
// See the README's "What the gateway refuses". Only WebSocket upgrades
// become tunnels (handler.go), a Transfer-Encoding request closes its
// connection after the answer, TRACE is refused, client connections are
// capped and their reads and writes time out between progress (conns.go,
// the front's first-request deadline, clientBody), a client's broken body
// is its own 400 and never the instance's failure, public errors and
// answers name no internal node or address (debug headers aside), and an
// idle upstream connection that received anything is never reused.
// With Config.TLS its listener speaks TLS, and upstreams are told
// X-Forwarded-Proto: https on every path. An instance registered with TLS
// (a service host under --internal-tls) is dialled with TLS verified
// against the cluster CA, presenting the node's certificate.
//
// Hedging is on by default (Config.HedgeAuto from the node's --hedge-after
// auto) and capped: hedges stay under a tenth of a service's requests
// (hedge.go) and share the retry budget.
package gateway
