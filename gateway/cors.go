package gateway

import (
	"net/http"
	"strings"
)

// CORS header values the gateway sends for an allowed origin.
const (
	corsAllowMethods = "GET, POST, PUT, PATCH, DELETE"
	corsAllowHeaders = "X-Requested-With, Content-Type"
	corsMaxAge       = "600"
)

// corsPolicy decides, per request, whether the gateway answers for CORS.
//
// With no origins configured the gateway stays out of CORS entirely and
// whatever the services send passes through. With origins configured, a
// request from an allowed origin gets the gateway's CORS headers (any the
// service sends are dropped so that they are never duplicated) and its
// preflight is answered 204 by the gateway without reaching the service. A
// request from any other origin gets no CORS headers from the gateway, and
// its preflight is proxied like any OPTIONS request: the browser then
// refuses the cross-origin call unless the service itself allows it.
type corsPolicy struct {
	any     bool                // "*" configured
	allowed map[string]struct{} // exact origins
	// Shared, read-only header values with len == cap, so that Add never
	// appends into them.
	methods, headers, maxAge, star []string
}

func newCORSPolicy(origins []string) corsPolicy {
	p := corsPolicy{
		methods: []string{corsAllowMethods},
		headers: []string{corsAllowHeaders},
		maxAge:  []string{corsMaxAge},
		star:    []string{"*"},
	}
	for _, o := range origins {
		if o == "*" {
			p.any = true
			continue
		}
		if p.allowed == nil {
			p.allowed = make(map[string]struct{}, len(origins))
		}
		p.allowed[o] = struct{}{}
	}
	return p
}

// enabled reports whether any origin is configured.
func (p *corsPolicy) enabled() bool { return p.any || len(p.allowed) > 0 }

// allow returns the request's Origin and whether the gateway handles CORS
// for it.
func (p *corsPolicy) allow(r *http.Request) (string, bool) {
	if !p.enabled() {
		return "", false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return "", false
	}
	if p.any {
		return origin, true
	}
	_, ok := p.allowed[origin]
	return origin, ok
}

// isPreflight reports whether r is a CORS preflight request.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
}

// setHeaders writes the CORS headers for an allowed origin into h, first
// dropping any Access-Control-* header already there (a service's own).
// h must be a header map the gateway owns: an upstream response's, before
// it is copied to the client, or the client response's when the gateway
// answers by itself.
func (p *corsPolicy) setHeaders(h http.Header, origin string) {
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			delete(h, k)
		}
	}
	if p.any {
		h["Access-Control-Allow-Origin"] = p.star
	} else {
		h["Access-Control-Allow-Origin"] = []string{origin}
		h.Add("Vary", "Origin")
	}
	h["Access-Control-Allow-Methods"] = p.methods
	h["Access-Control-Allow-Headers"] = p.headers
	h["Access-Control-Max-Age"] = p.maxAge
}
