// Package upstream is the gateway's one upstream client: one pool of
// HTTP/1.1 connections per instance address, for every request the
// gateway sends (plain, with a body, or an upgrade), one response-header
// timeout mechanism (the connection's deadline, per request through
// HeaderTimeoutKey), one stale-connection rule (Conn.stale when a
// connection leaves the pool; one resend for an idempotent request that
// met a connection closed on the way). Client is an http.RoundTripper; the
// gateway's express path also takes a Conn with Get and writes and reads
// its buffers itself.
//
// It knows nothing of routes, services or policies: it imports only the
// standard library and gateway/internal/wire. The gateway's request body
// may offer AbortRead (a read it can cut short when the exchange is over);
// a request carries its own header timeout as a value with a
// HeaderTimeout method under HeaderTimeoutKey.
package upstream
