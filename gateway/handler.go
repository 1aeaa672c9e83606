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

	"github.com/gin-gonic/gin"
	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway/internal/wire"
)

// serveGin adapts serve to gin. Routing is done by serve itself, on the
// request URL, so that escaped paths survive (gin matches on the decoded path).
func (g *Gateway) serveGin(c *gin.Context) { g.serve(c.Writer, c.Request) }

// serve routes one request: name the service, pick a live instance, proxy.
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id, idOK := inboundRequestID(r.Header)
	if !idOK {
		id = newRequestID()
	}
	origin, cors := g.cors.allow(r)
	if len(r.TransferEncoding) > 0 {
		// RFC 9112 §6.1: a request framed by Transfer-Encoding may also
		// have carried a Content-Length (net/http drops it before the
		// handler sees it), which a proxy in front of the gateway may have
		// trusted instead: close after the answer, so that nothing
		// pipelined behind it on this connection is read with the other
		// framing.
		w.Header().Set("Connection", "close")
	}

	if g.limiter != nil {
		if wait, ok := g.limiter.allow(clientIP(r)); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			g.rateLimited.Add(1)
			g.reject(w, id, origin, cors, http.StatusTooManyRequests, ReasonRateLimited, "too many requests from this client; retry later")
			return
		}
	}
	service, decRest, escRest, ok := splitPath(r.URL)
	if !ok {
		g.reject(w, id, origin, cors, http.StatusNotFound, ReasonNoService,
			"no service in path: use /<service>/..., where <service> is a DNS label (lower-case letters, digits and '-')")
		return
	}
	if cors && isPreflight(r) {
		h := w.Header()
		h.Set("X-Request-Id", id)
		g.cors.setHeaders(h, origin)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if hasDotDotSegment(decRest) {
		g.reject(w, id, origin, cors, http.StatusBadRequest, ReasonInvalidPath,
			fmt.Sprintf("path of service %q contains a \"..\" segment", service))
		return
	}
	insts := g.cat.Instances(service)
	if len(insts) == 0 {
		g.reject(w, id, origin, cors, http.StatusNotFound, ReasonUnknownService,
			fmt.Sprintf("service %q has no registered instances", service))
		return
	}
	if r.Method == http.MethodTrace && insts[0].Meta[MetaAllowTrace] != "true" {
		// TRACE echoes the request, cookies and credentials included, back
		// to whoever made it (cross-site tracing): nginx answers 405 too.
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		g.reject(w, id, origin, cors, http.StatusMethodNotAllowed, ReasonMethodNotAllowed,
			fmt.Sprintf("TRACE is not forwarded to service %q", service))
		return
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
	st := g.services.get(service)
	opts := pickOpts{key: hashKey(r, insts), local: g.cfg.LocalNode}
	if !g.cfg.PreferLocal {
		opts.local = ""
	}
	inst := chooseExcept(g.sel, st, g.live, insts, nil, opts)
	if inst == nil {
		g.reject(w, id, origin, cors, http.StatusServiceUnavailable, ReasonNoLiveInstance,
			fmt.Sprintf("service %q has %d registered instances, none on a live node and routable%s", service, len(insts), unroutable(insts)))
		return
	}

	if r.ContentLength > maxRequestBody {
		g.reject(w, id, origin, cors, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge,
			fmt.Sprintf("request body of %d bytes is over the gateway's limit of %d", r.ContentLength, maxRequestBody))
		return
	}
	var cbody *clientBody
	if r.Body != nil && r.Body != http.NoBody {
		// Bodies of unknown length are cut at the limit; the proxy then
		// answers 413 (proxyError).
		cbody = &clientBody{ReadCloser: http.MaxBytesReader(w, r.Body, maxRequestBody),
			rc: http.NewResponseController(w), timeout: g.cfg.ClientBodyTimeout}
		r.Body = cbody
	}
	if h := st.healthOf(st.hostport(inst)); h.inflight.Load() >= maxInflightPerInstance {
		// Fail fast rather than queue behind an instance that is already
		// saturated: another instance, or 503.
		inst = chooseExcept(g.sel, st, g.live, insts, st.saturated(insts), opts)
		if inst == nil {
			g.reject(w, id, origin, cors, http.StatusServiceUnavailable, ReasonOverloaded,
				fmt.Sprintf("every instance of service %q has %d requests in flight through this gateway", service, maxInflightPerInstance))
			return
		}
	}
	body, replayable, err := bufferBody(r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			g.reject(w, id, origin, cors, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge,
				fmt.Sprintf("request body is over the gateway's limit of %d bytes", maxRequestBody))
			return
		}
		w.Header().Set("Connection", "close")
		if isTimeout(err) {
			g.reject(w, id, origin, cors, http.StatusRequestTimeout, ReasonClientTimeout,
				fmt.Sprintf("the request body stopped arriving for %s", g.cfg.ClientBodyTimeout))
			return
		}
		g.reject(w, id, origin, cors, http.StatusBadRequest, ReasonBadRequest, err.Error())
		return
	}
	rt := &route{
		Context:    r.Context(),
		inst:       inst,
		hostport:   st.hostport(inst),
		origin:     origin,
		cors:       cors,
		st:         st,
		insts:      insts,
		decRest:    decRest,
		escRest:    escRest,
		body:       body,
		replayable: replayable,
		cbody:      cbody,
		upgrade:    r.Header.Get("Upgrade") != "",
		trustXFF:   g.trusted(r),
		tls:        r.TLS != nil || g.cfg.TLS != nil,
		start:      start,
	}
	if v := insts[0].Meta[MetaResponseHeaderTimeout]; v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			rt.headerTimeout = d
		}
	}
	rt.path, rt.rawPath = upstreamPath(inst.Path, decRest, escRest)
	rt.requestID[0] = id
	rt.debug = g.cfg.DebugHeaders || rt.trustXFF
	if rt.debug {
		rt.upstream[0] = inst.Node
	}
	if !idOK {
		// The outbound request is cloned from this one.
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		r.Header["X-Request-Id"] = rt.requestID[:]
	}
	if rt.upgrade {
		// Once hijacked, the connection is invisible to http.Server.Shutdown.
		g.tunnels.add()
		defer g.tunnels.done()
	}
	if leanInbound(r, rt) {
		g.forward(w, r, rt)
	} else {
		g.proxy.ServeHTTP(w, r.WithContext(rt))
	}
	if !rt.upgrade {
		// The whole request, retries, hedges and the body included. A
		// tunnel's lifetime is no request latency.
		st.duration.observe(time.Since(start))
	}
}

// reject answers a request the gateway cannot route.
func (g *Gateway) reject(w http.ResponseWriter, id, origin string, cors bool, status int, reason, msg string) {
	if i := rejectIndex(reason); i >= 0 {
		g.rejected[i].Add(1)
	}
	h := w.Header()
	h.Set("X-Request-Id", id)
	if cors {
		g.cors.setHeaders(h, origin)
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
