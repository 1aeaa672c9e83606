// Package gateway is herd's data plane: it routes http://<node>:8080/<service>/<rest>
// to a live instance of <service> on any node through one shared, tuned
// reverse proxy.
//
// It reads instances from a Catalog and node liveness from a Liveness view,
// both small interfaces declared here and answered from memory by the node.
// It never imports gossip and never talks to etcd, so the data plane keeps
// routing from the last catalog snapshot while the control plane is in
// trouble. It balances, ejects outliers, retries and hedges (see the README
// and front.go for the path a request takes). With Config.TLS its listener
// speaks TLS, and upstreams are told X-Forwarded-Proto: https on every path.
// Every upstream connection, in both pools (the lean transport's and
// http.Transport's), is opened by one upstreamDialer (dial.go): TCP, or for
// an instance registered with TLS (a service host under --internal-tls)
// TLS verified against the cluster CA with Config.UpstreamTLS, the node's
// certificate, presented.
//
// It faces strangers (see the README's "What the gateway refuses"): only
// WebSocket upgrades become tunnels (handler.go), a Transfer-Encoding
// request closes its connection after the answer, TRACE is refused, client
// connections are capped and their reads and writes time out between
// progress (conns.go, the front's first-request deadline, clientBody), a
// client's broken body is its own 400 and never the instance's failure,
// public errors and answers name no internal node or address (debug
// headers aside), and an idle upstream connection that received anything
// is never reused (upConn.stale).
//
// Hedging is on by default (Config.HedgeAuto from the node's --hedge-after
// auto) and capped: hedges stay under a tenth of a service's requests
// (hedge.go) and share the retry budget.
//
// The HTTP/1.1 field rules (hop-by-hop fields, forwarding fields, token
// lists) live once, in internal/wire, which imports only the standard
// library; every path here uses them (issue 15 moves the rest of the wire
// rules there and rebuilds the paths around one request path).
package gateway
