package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway/internal/upstream"
)

// route is the state of one request, from the handler's decision to the
// answer: serve's steps fill it in, and it travels to the transports and
// back to modifyResponse and proxyError as the outbound request's
// context. route is itself the context (its parent plus one value) to save
// an allocation per request.
type route struct {
	context.Context // the inbound request's context

	inst     *api.Instance // read-only: shared with the catalog
	hostport string        // inst.Address:inst.Port
	// st, insts, decRest and escRest let a retry pick another instance and
	// build its path.
	st               *serviceState
	insts            []api.Instance
	decRest, escRest string
	// body is the buffered request body (nil when empty or streamed);
	// replayable says whether the request may be sent again.
	body       []byte
	replayable bool
	// cbody is the client's streamed body, nil when there is none.
	cbody   *clientBody
	upgrade bool
	// trustXFF: the client is in TrustedProxies, so its X-Forwarded-For
	// is kept.
	trustXFF bool
	// tls: the client reached the gateway over TLS (X-Forwarded-Proto
	// https). A connection the front handed to net/http is no *tls.Conn
	// there, so this comes from the gateway's listener, not from r.TLS.
	tls bool
	// debug: answers name the node that served them (X-Herd-Upstream):
	// Config.DebugHeaders is on, or the client is a trusted proxy. The
	// public sees no internal topology.
	debug bool
	// start is when the gateway received the request.
	start time.Time
	// newID: the gateway made the request ID (the client sent none it
	// could keep), and sends it upstream.
	newID bool
	// opts are the balancing options of the first pick.
	opts pickOpts
	// headerTimeout is the service's own response-header timeout (meta
	// herd.response-header-timeout), 0 for the gateway's.
	headerTimeout time.Duration
	path          string // upstream URL.Path
	rawPath       string // upstream URL.RawPath, "" when Path needs no special escaping
	origin        string // Origin to answer for CORS, when cors
	cors          bool   // the gateway handles CORS for this request

	// Single-value header slices the response headers point into, so that
	// setting them costs no allocation.
	requestID [1]string
	upstream  [1]string // the serving node's name, when debug
	// forwarded backs X-Forwarded-For and X-Forwarded-Host, and url the
	// outbound URL, of a request sent by forward.
	forwarded [2]string
	url       url.URL
}

var _ context.Context = (*route)(nil)

type routeKey struct{}

// Value returns the route itself for routeKey (and the upstream client's
// HeaderTimeoutKey) and defers to the parent
// otherwise, which keeps cancellation and deadlines the parent's.
func (rt *route) Value(key any) any {
	if key == (routeKey{}) || key == (upstream.HeaderTimeoutKey{}) {
		return rt
	}
	return rt.Context.Value(key)
}

// HeaderTimeout is the service's own response-header timeout, 0 for the
// gateway's: what the upstream client asks for under HeaderTimeoutKey.
func (rt *route) HeaderTimeout() time.Duration { return rt.headerTimeout }

func routeFrom(ctx context.Context) *route {
	rt, _ := ctx.Value(routeKey{}).(*route)
	return rt
}

// modifyResponse replaces what the upstream said about the gateway's own
// headers with the gateway's values.
func (g *Gateway) modifyResponse(res *http.Response) error {
	rt := routeFrom(res.Request.Context())
	if rt.st != nil {
		rt.st.countAnswer(res.Request.Method, res.StatusCode)
	}
	h := res.Header
	g.setOwnFields(h, rt)
	for _, k := range [...]string{"Location", "Content-Location"} {
		if v := h[k]; len(v) == 1 {
			if nv, ok := rt.routeLocation(v[0]); ok {
				h[k] = []string{nv}
			}
		}
	}
	if v := h["Refresh"]; len(v) == 1 {
		// "5; url=/echo/x": the URL part, as for Location.
		if i := strings.Index(strings.ToLower(v[0]), "url="); i >= 0 {
			if nv, ok := rt.routeLocation(strings.Trim(v[0][i+4:], `"' `)); ok {
				h["Refresh"] = []string{v[0][:i+4] + nv}
			}
		}
	}
	return nil
}

// setOwnFields puts the gateway's own fields into an answer's header h,
// over whatever the upstream said: X-Request-Id, X-Herd-Upstream (only
// for debug routes; an upstream's own is dropped) and the CORS fields.
// The express path writes the same fields into its raw head
// (writeAnswerHead, dropAnswerField).
func (g *Gateway) setOwnFields(h http.Header, rt *route) {
	h["X-Request-Id"] = rt.requestID[:]
	if rt.upstream[0] != "" {
		h["X-Herd-Upstream"] = rt.upstream[:]
	} else {
		delete(h, "X-Herd-Upstream")
	}
	if rt.cors {
		g.cors.setHeaders(h, rt.origin)
	}
}

// routeLocation rewrites a URL the instance sent (Location,
// Content-Location, Refresh) that points into its own path prefix, as a
// path or as an absolute URL on its own address, into the gateway's route
// to the service, as nginx's proxy_redirect default does: an instance at
// path /echo behind service alias that redirects to /echo/x sends the
// client to /alias/x, not to service echo; one at http://10.0.0.5:9000/y
// (an address clients cannot reach) to /alias/y when its prefix is empty.
// Other URLs (relative ones, other hosts, other paths) are left alone.
func (rt *route) routeLocation(v string) (string, bool) {
	rest := v
	if !strings.HasPrefix(v, "/") || strings.HasPrefix(v, "//") {
		u, err := url.Parse(v)
		if err != nil || u.Host == "" || u.User != nil || !rt.isInstanceHost(u) {
			return "", false
		}
		// What follows scheme://host (url.Parse keeps both as written).
		skip := len("//") + len(u.Host)
		if u.Scheme != "" {
			skip += len(u.Scheme) + len(":")
		}
		if skip > len(v) {
			return "", false
		}
		rest = v[skip:]
		if rest == "" || rest[0] != '/' {
			rest = "/" + rest
		}
	}
	prefix := rt.inst.Path
	if !strings.HasPrefix(rest, prefix) {
		return "", false
	}
	after := rest[len(prefix):]
	if after != "" && after[0] != '/' && after[0] != '?' && after[0] != '#' {
		return "", false // "/echoes" is not under "/echo"
	}
	return "/" + rt.inst.Service + after, true
}

// isInstanceHost reports whether u's host is the route's instance.
func (rt *route) isInstanceHost(u *url.URL) bool {
	if strings.EqualFold(u.Host, rt.hostport) {
		return true
	}
	if u.Port() != "" || !strings.EqualFold(u.Hostname(), rt.inst.Address) {
		return false
	}
	return u.Scheme == "http" && rt.inst.Port == 80 || u.Scheme == "https" && rt.inst.Port == 443
}

// proxyError answers a request whose upstream exchange failed before any
// response header reached the client.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt := routeFrom(r.Context())
	if berr := rt.cbody.failure(); berr != nil {
		err = berr // whatever the transport made of it
	}
	if r.Context().Err() != nil && !errors.Is(err, errClientBody) {
		// The client went away (or Shutdown gave up on the request):
		// nobody is left to answer and nothing failed upstream.
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	h := w.Header()
	g.setOwnFields(h, rt)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		rt.st.countAnswer(r.Method, http.StatusRequestEntityTooLarge)
		writeError(w, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge,
			fmt.Sprintf("request body is over the gateway's limit of %d bytes", maxRequestBody))
		return
	}
	if errors.Is(err, errClientBody) {
		// The client's body broke off, stalled or was malformed (bad
		// chunk framing): the client's fault, answered as net/http would,
		// and no verdict on the instance (see verdict).
		status, reason, msg := http.StatusBadRequest, ReasonBadRequest, err.Error()
		if isTimeout(err) {
			status, reason = http.StatusRequestTimeout, ReasonClientTimeout
			msg = fmt.Sprintf("the request body stopped arriving for %s", g.cfg.ClientBodyTimeout)
		}
		rt.st.countAnswer(r.Method, status)
		h.Set("Connection", "close")
		writeError(w, status, reason, msg)
		return
	}
	status, reason, msg := http.StatusBadGateway, ReasonUpstreamError, "the upstream instance failed"
	if isTimeout(err) {
		status, reason, msg = http.StatusGatewayTimeout, ReasonUpstreamTimeout, "the upstream instance timed out"
	}
	rt.st.countAnswer(r.Method, status)
	// The details (which node, which address, what broke) are internal
	// topology: they go to the log, under the request ID the client has.
	g.log.Warn("upstream request failed", "request_id", rt.requestID[0],
		"service", rt.inst.Service, "instance", rt.inst.ID, "node", rt.inst.Node,
		"addr", rt.hostport, "reason", reason, "err", err)
	writeError(w, status, reason, msg+" (request "+rt.requestID[0]+")")
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
