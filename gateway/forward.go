package gateway

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway/internal/upstream"
	"github.com/herdcluster/herd/gateway/internal/wire"
)

// forward proxies r to the route's instance: every request takes it. A
// request the front read that the express path can take (express.go) goes
// there first; every other request, or attempt the express path hands
// over, is sent by the retrying transport (retry.go) over the upstream
// client (gateway/internal/upstream) and answered by writeResponse. The outbound header
// shares the inbound's values instead of cloning them, the forwarding
// fields point into the route, and the answer's header values move to
// the client's header map as they are.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, rt *route) {
	if fw, ok := w.(*frontWriter); ok {
		if g.expressable(r, rt) {
			g.express(fw, r, rt)
			return
		}
		fw.fc.watch.arm(fw.fc, watchClientAfter)
	}
	out := rt.outboundRequest(r)
	res, err := g.rtrip.RoundTrip(out)
	g.writeResponse(w, out, res, err)
}

// outboundRequest is the request forward sends upstream for r: its body
// (buffered, or the client's streamed: limitBody, bufferBody) and
// trailers as they are, and for an upgrade its Connection and Upgrade
// fields, the only hop-by-hop fields that go on.
func (rt *route) outboundRequest(r *http.Request) *http.Request {
	out := r.WithContext(rt)
	rt.url = url.URL{Scheme: scheme(rt.inst), Host: rt.hostport, Path: rt.path, RawPath: rt.rawPath,
		RawQuery: r.URL.RawQuery, ForceQuery: r.URL.ForceQuery}
	out.URL = &rt.url
	out.Host = "" // the Host header follows the URL: the instance
	out.RequestURI = ""
	out.Close = false
	out.TransferEncoding = nil // the upstream client frames the body itself
	if !upstream.HasBody(r) {
		out.Body, out.ContentLength, out.GetBody = nil, 0, nil
	}
	out.Header = rt.outboundHeader(r)
	if rt.upgrade {
		out.Header["Connection"] = valueUpgrade
		out.Header["Upgrade"] = r.Header["Upgrade"]
	}
	return out
}

// writeResponse answers the client with the outcome of sending out.
func (g *Gateway) writeResponse(w http.ResponseWriter, out *http.Request, res *http.Response, err error) {
	if err != nil {
		g.proxyError(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		if rt := routeFrom(out.Context()); rt.upgrade {
			_ = g.modifyResponse(res)
			g.tunnel(w, out, res)
			return
		}
		res.Body.Close()
		g.proxyError(w, out, errUnaskedUpgrade)
		return
	}
	wire.RemoveHopByHop(res.Header)
	_ = g.modifyResponse(res)
	dst := w.Header()
	moveHeader(dst, res.Header)
	// The Trailer header is not in res.Header: announce the trailers the
	// upstream announced.
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(res.StatusCode)
	if err := g.copyBody(w, res); err != nil {
		res.Body.Close()
		// Headers are out: all that is left is to break the connection,
		// so the client sees a truncated answer, not a complete one. The
		// server recovers this panic quietly.
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // fills res.Trailer
	if len(res.Trailer) > 0 {
		// Trailers need chunking, also for a short body whose length the
		// server would otherwise compute.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	if len(res.Trailer) == announced {
		moveHeader(dst, res.Trailer)
		return
	}
	for k, vv := range res.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
}

// errUnaskedUpgrade: the upstream switched protocols though nobody asked.
var errUnaskedUpgrade = errors.New("upstream switched protocols without an upgrade request")

// Shared single-value header slices. Header maps may hold them: nothing
// writes into a header value slice in place (Set replaces it, Add appends
// past its capacity).
var (
	valueEmpty    = []string{""}
	valueTrailers = []string{"trailers"}
	valueHTTP     = []string{"http"}
	valueHTTPS    = []string{"https"}
	valueUpgrade  = []string{"Upgrade"}
)

// outboundHeader is the header sent upstream for r: r's own without the
// hop-by-hop headers (also those r's Connection header names) and without
// the client's forwarding headers, plus X-Forwarded-For (the client's
// address, after the chain a trusted proxy sent), X-Forwarded-Host and
// X-Forwarded-Proto. The values are r's, shared, not copied.
func (rt *route) outboundHeader(r *http.Request) http.Header {
	in := r.Header
	h := make(http.Header, len(in)+4)
	conn := in["Connection"]
	for k, vv := range in {
		if sentUpstream(k, conn) {
			h[k] = vv
		}
	}
	// Tell the upstream trailers are welcome when the client said so.
	if wire.AnyHasToken(in["Te"], "trailers") {
		h["Te"] = valueTrailers
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = valueEmpty // not Go's own
	}
	if prior, ip, ok := rt.forwardedFor(r); ok {
		if len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		rt.forwarded[0] = ip
		h["X-Forwarded-For"] = rt.forwarded[0:1:1]
	}
	rt.forwarded[1] = r.Host
	h["X-Forwarded-Host"] = rt.forwarded[1:2:2]
	h["X-Forwarded-Proto"] = rt.forwardedProto()
	return h
}

// sentUpstream reports whether the client's field k goes upstream (on
// every path: outboundHeader, writeExpressRequest): not a hop-by-hop
// field, nor one that the Connection field values conn name, nor a
// forwarding field, which the gateway sets itself.
func sentUpstream(k string, conn []string) bool {
	return !wire.IsHopByHop(k) && !wire.IsForwarding(k) && (len(conn) == 0 || !wire.AnyHasToken(conn, k))
}

// The forwarding fields every path sends upstream (outboundHeader,
// writeExpressRequest): X-Forwarded-For, the chain a trusted proxy
// sent and then the client's address; X-Forwarded-Host, the Host the client
// asked for; X-Forwarded-Proto, how it reached the gateway. A client's own
// forwarding fields are dropped (wire.IsForwarding) unless it is a trusted
// proxy, whose X-Forwarded-For chain is kept.

// forwardedFor returns the X-Forwarded-For chain to send for r: prior,
// the chain a trusted proxy sent (nil otherwise), then ip, the client's
// address; ok is false when r's remote address has none (nothing is sent).
func (rt *route) forwardedFor(r *http.Request) (prior []string, ip string, ok bool) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return nil, "", false
	}
	if rt.trustXFF {
		prior = r.Header["X-Forwarded-For"]
	}
	return prior, ip, true
}

// forwardedProto is the X-Forwarded-Proto value (shared: not to be
// modified).
func (rt *route) forwardedProto() []string {
	if rt.tls {
		return valueHTTPS
	}
	return valueHTTP
}

// moveHeader adds src's values to dst, handing over src's slices where dst
// has none of its own (src is not used afterwards).
func moveHeader(dst, src http.Header) {
	for k, vv := range src {
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
			continue
		}
		dst[k] = vv
	}
}

// copyBody copies the answer's body to the client, flushing after every
// write for streams (no length) and server-sent events, as ReverseProxy
// does.
func (g *Gateway) copyBody(w http.ResponseWriter, res *http.Response) error {
	if res.Body == http.NoBody {
		return nil
	}
	var f http.Flusher
	if res.ContentLength == -1 || isEventStream(res.Header["Content-Type"]) {
		f, _ = w.(http.Flusher)
	}
	buf := upstream.Buffers.Get()
	defer upstream.Buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if f != nil {
				f.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// isEventStream reports whether the Content-Type is text/event-stream
// (parameters and case aside).
func isEventStream(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	const want = "text/event-stream"
	v := strings.TrimSpace(ct[0])
	if len(v) < len(want) || !strings.EqualFold(v[:len(want)], want) {
		return false
	}
	rest := strings.TrimSpace(v[len(want):])
	return rest == "" || rest[0] == ';'
}

// scheme is the URL scheme of requests to inst.
func scheme(inst *api.Instance) string {
	if inst.TLS {
		return "https"
	}
	return "http"
}
