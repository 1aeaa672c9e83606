package gateway

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway/internal/wire"
)

// serve is the gateway's one request path, whatever served the client's
// connection (the front, or net/http for what the front hands over). The
// request's state is one route; each step below does one job on it and
// answers the request itself when it ends it there (false).
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) {
	rt := g.newRoute(r)
	if len(r.TransferEncoding) > 0 {
		// RFC 9112 §6.1: a request framed by Transfer-Encoding may also
		// have carried a Content-Length (net/http drops it before the
		// handler sees it), which a proxy in front of the gateway may have
		// trusted instead: close after the answer, so that nothing
		// pipelined behind it on this connection is read with the other
		// framing.
		w.Header().Set("Connection", "close")
	}
	if !g.admit(w, r, rt) || !g.resolve(w, r, rt) || !g.pick(w, r, rt) ||
		!g.limitBody(w, r, rt) || !g.avoidSaturated(w, r, rt) || !g.bufferBody(w, r, rt) {
		return
	}
	rt.settle(r, g.cfg.DebugHeaders)
	if rt.upgrade {
		// Once hijacked, the connection is invisible to http.Server.Shutdown.
		g.tunnels.add()
		defer g.tunnels.done()
	}
	g.forward(w, r, rt)
	if !rt.upgrade {
		// The whole request, retries, hedges and the body included. A
		// tunnel's lifetime is no request latency.
		rt.st.duration.observe(time.Since(rt.start))
	}
}

// newRoute starts the route of r: its request ID (the client's, when it
// sent a usable one) and its CORS decision.
func (g *Gateway) newRoute(r *http.Request) *route {
	rt := &route{Context: r.Context(), start: time.Now(), trustXFF: g.trusted(r), tls: r.TLS != nil || g.cfg.TLS != nil}
	id, ok := inboundRequestID(r.Header)
	if !ok {
		id = newRequestID()
	}
	rt.requestID[0], rt.newID = id, !ok
	rt.origin, rt.cors = g.cors.allow(r)
	return rt
}

// admit applies the gateway's limits on the client: its request rate.
func (g *Gateway) admit(w http.ResponseWriter, r *http.Request, rt *route) bool {
	if g.limiter == nil {
		return true
	}
	wait, ok := g.limiter.allow(clientIP(r))
	if ok {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	g.rateLimited.Add(1)
	g.reject(w, rt, http.StatusTooManyRequests, ReasonRateLimited, "too many requests from this client; retry later")
	return false
}

// resolve names the service of r and its instances, answers CORS
// preflights, and refuses what no instance is sent: a path that climbs out
// of the instance's prefix, TRACE, upgrades other than WebSocket.
func (g *Gateway) resolve(w http.ResponseWriter, r *http.Request, rt *route) bool {
	service, decRest, escRest, ok := splitPath(r.URL)
	if !ok {
		g.reject(w, rt, http.StatusNotFound, ReasonNoService,
			"no service in path: use /<service>/..., where <service> is a DNS label (lower-case letters, digits and '-')")
		return false
	}
	if rt.cors && isPreflight(r) {
		h := w.Header()
		h["X-Request-Id"] = rt.requestID[:]
		g.cors.setHeaders(h, rt.origin)
		w.WriteHeader(http.StatusNoContent)
		return false
	}
	if hasDotDotSegment(decRest) {
		g.reject(w, rt, http.StatusBadRequest, ReasonInvalidPath,
			fmt.Sprintf("path of service %q contains a \"..\" segment", service))
		return false
	}
	rt.decRest, rt.escRest = decRest, escRest
	rt.insts = g.cat.Instances(service)
	if len(rt.insts) == 0 {
		g.reject(w, rt, http.StatusNotFound, ReasonUnknownService,
			fmt.Sprintf("service %q has no registered instances", service))
		return false
	}
	if r.Method == http.MethodTrace && rt.insts[0].Meta[MetaAllowTrace] != "true" {
		// TRACE echoes the request, cookies and credentials included, back
		// to whoever made it (cross-site tracing): nginx answers 405 too.
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		g.reject(w, rt, http.StatusMethodNotAllowed, ReasonMethodNotAllowed,
			fmt.Sprintf("TRACE is not forwarded to service %q", service))
		return false
	}
	if _, up := r.Header["Upgrade"]; up && !websocketUpgrade(r) {
		// Only WebSocket upgrades become tunnels. Any other (h2c above
		// all, which would hand the client a raw connection to the
		// instance, past every rule of the gateway) is ignored, as RFC
		// 9110 §7.8 lets a server do: the request is served as plain
		// HTTP/1.1, and an instance answering 101 anyway is a 502.
		delete(r.Header, "Upgrade")
		delete(r.Header, "Http2-Settings")
	}
	rt.upgrade = r.Header.Get("Upgrade") != ""
	rt.st = g.services.get(service)
	return true
}

// pick chooses the instance of the route's service that r goes to first:
// a live, routable one, not already saturated by this gateway.
func (g *Gateway) pick(w http.ResponseWriter, r *http.Request, rt *route) bool {
	st, insts := rt.st, rt.insts
	opts := pickOpts{key: hashKey(r, insts), local: g.cfg.LocalNode}
	if !g.cfg.PreferLocal {
		opts.local = ""
	}
	inst := chooseExcept(g.sel, st, g.live, insts, nil, opts)
	if inst == nil {
		g.reject(w, rt, http.StatusServiceUnavailable, ReasonNoLiveInstance,
			fmt.Sprintf("service %q has %d registered instances, none on a live node and routable%s", insts[0].Service, len(insts), unroutable(insts)))
		return false
	}
	rt.inst, rt.hostport, rt.opts = inst, st.hostport(inst), opts
	return true
}

// avoidSaturated moves the route off an instance that already has
// maxInflightPerInstance requests in flight through this gateway: fail
// fast rather than queue behind it, to another instance, or 503.
func (g *Gateway) avoidSaturated(w http.ResponseWriter, r *http.Request, rt *route) bool {
	st, insts := rt.st, rt.insts
	if st.healthOf(rt.hostport).inflight.Load() < maxInflightPerInstance {
		return true
	}
	inst := chooseExcept(g.sel, st, g.live, insts, st.saturated(insts), rt.opts)
	if inst == nil {
		g.reject(w, rt, http.StatusServiceUnavailable, ReasonOverloaded,
			fmt.Sprintf("every instance of service %q has %d requests in flight through this gateway", insts[0].Service, maxInflightPerInstance))
		return false
	}
	rt.inst, rt.hostport = inst, st.hostport(inst)
	return true
}

// limitBody puts r's body under the gateway's limits: its size, and the
// time each read may take.
func (g *Gateway) limitBody(w http.ResponseWriter, r *http.Request, rt *route) bool {
	if r.ContentLength > maxRequestBody {
		g.reject(w, rt, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge,
			fmt.Sprintf("request body of %d bytes is over the gateway's limit of %d", r.ContentLength, maxRequestBody))
		return false
	}
	if r.Body != nil && r.Body != http.NoBody {
		// Bodies of unknown length are cut at the limit; the proxy then
		// answers 413 (proxyError).
		rt.cbody = &clientBody{ReadCloser: http.MaxBytesReader(w, r.Body, maxRequestBody),
			rc: http.NewResponseController(w), timeout: g.cfg.ClientBodyTimeout}
		r.Body = rt.cbody
	}
	return true
}

// bufferBody reads r's body into memory when it is small enough to be sent
// again (see the package function bufferBody).
func (g *Gateway) bufferBody(w http.ResponseWriter, r *http.Request, rt *route) bool {
	body, replayable, err := bufferBody(r)
	rt.body, rt.replayable = body, replayable
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		g.reject(w, rt, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge,
			fmt.Sprintf("request body is over the gateway's limit of %d bytes", maxRequestBody))
	case isTimeout(err):
		w.Header().Set("Connection", "close")
		g.reject(w, rt, http.StatusRequestTimeout, ReasonClientTimeout,
			fmt.Sprintf("the request body stopped arriving for %s", g.cfg.ClientBodyTimeout))
	default:
		w.Header().Set("Connection", "close")
		g.reject(w, rt, http.StatusBadRequest, ReasonBadRequest, err.Error())
	}
	return false
}

// settle fixes what the route sends its first instance: the path, the
// service's own header timeout, and the request ID on r, which the
// outbound request is made from. debug is Config.DebugHeaders.
func (rt *route) settle(r *http.Request, debug bool) {
	inst := rt.inst
	if v := rt.insts[0].Meta[MetaResponseHeaderTimeout]; v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			rt.headerTimeout = d
		}
	}
	rt.path, rt.rawPath = upstreamPath(inst.Path, rt.decRest, rt.escRest)
	rt.debug = debug || rt.trustXFF
	if rt.debug {
		rt.upstream[0] = inst.Node
	}
	if rt.newID {
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		r.Header["X-Request-Id"] = rt.requestID[:]
	}
}

// reject answers a request the gateway cannot route.
func (g *Gateway) reject(w http.ResponseWriter, rt *route, status int, reason, msg string) {
	if i := rejectIndex(reason); i >= 0 {
		g.rejected[i].Add(1)
	}
	h := w.Header()
	h["X-Request-Id"] = rt.requestID[:]
	if rt.cors {
		g.cors.setHeaders(h, rt.origin)
	}
	writeError(w, status, reason, msg)
}

// splitPath splits the request path /<service>[/<rest>] into the service
// name and the rest, both decoded and escaped (escRest is "" when the request
// path needs no escaping beyond the default, see url.URL.RawPath). ok is
// false when the path names no valid service.
func splitPath(u *url.URL) (service, decRest, escRest string, ok bool) {
	service, decRest, ok = cutFirstSegment(u.Path)
	if !ok || !api.ValidName(service) {
		return "", "", "", false
	}
	if u.RawPath == "" {
		return service, decRest, "", true
	}
	seg, rest, ok := cutFirstSegment(u.EscapedPath())
	if !ok {
		return "", "", "", false
	}
	if seg != service {
		// The first segment was escaped: it must decode to the very same
		// name, and not hide a '/' ("/a%2Fb/..." is not service "a").
		if d, err := url.PathUnescape(seg); err != nil || d != service {
			return "", "", "", false
		}
	}
	return service, decRest, rest, true
}

// cutFirstSegment splits "/seg/rest" into "seg" and "/rest".
func cutFirstSegment(p string) (seg, rest string, ok bool) {
	if len(p) < 2 || p[0] != '/' {
		return "", "", false
	}
	seg = p[1:]
	if i := strings.IndexByte(seg, '/'); i >= 0 {
		seg, rest = seg[:i], seg[i:]
	}
	return seg, rest, seg != ""
}

// upstreamPath joins the instance's path prefix and the rest of the request
// path: ("/hello", "/") -> "/hello/", ("/hello", "") -> "/hello",
// ("", "") -> "/". raw is the escaped form when the request carried one.
func upstreamPath(prefix, decRest, escRest string) (path, raw string) {
	if prefix == "" && decRest == "" {
		return "/", ""
	}
	path = prefix + decRest
	if escRest != "" {
		raw = prefix + escRest
	}
	return path, raw
}

// hasDotDotSegment reports whether p has a ".." segment, which upstream
// servers resolve against the instance's path prefix and could climb out of
// it to another service on the same host. "..;x" counts too (servlet
// containers drop a segment's ";" parameters and see ".."), and "..\x"
// (servers that take '\' for '/').
func hasDotDotSegment(p string) bool {
	if !strings.Contains(p, "..") {
		return false
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." || strings.HasPrefix(seg, "..;") || strings.HasPrefix(seg, "..\\") {
			return true
		}
	}
	return false
}

// websocketUpgrade reports whether r asks for a WebSocket upgrade, and
// nothing else: a GET whose Upgrade lists only "websocket" and whose
// Connection lists "upgrade".
func websocketUpgrade(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	ups := r.Header["Upgrade"]
	if len(ups) != 1 || !wire.EqualFold(strings.TrimSpace(ups[0]), "websocket") {
		return false
	}
	for _, v := range r.Header["Connection"] {
		if wire.HasToken(v, "upgrade") {
			return true
		}
	}
	return false
}

// clientIP is the address of the peer that sent r.
func clientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// trusted reports whether r comes from a trusted proxy.
func (g *Gateway) trusted(r *http.Request) bool {
	if len(g.cfg.TrustedProxies) == 0 {
		return false
	}
	return g.trustedIP(clientIP(r))
}

// trustedIP reports whether ip is in TrustedProxies.
func (g *Gateway) trustedIP(ip netip.Addr) bool {
	for _, p := range g.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// hashKey is the request's key for a service whose instances ask for the
// hash policy (meta herd.hash-on "header:<name>" or "cookie:<name>"); 0 when
// the service does not hash or the request lacks the key.
func hashKey(r *http.Request, insts []api.Instance) uint64 {
	m := insts[0].Meta
	if len(m) == 0 || m[MetaBalancer] != BalancerHash {
		return 0
	}
	kind, name, ok := strings.Cut(m[MetaHashOn], ":")
	if !ok || name == "" {
		return 0
	}
	var v string
	switch kind {
	case "header":
		v = r.Header.Get(name)
	case "cookie":
		if c, err := r.Cookie(name); err == nil {
			v = c.Value
		}
	}
	if v == "" {
		return 0
	}
	return mix(stringHash(v)) | 1
}
