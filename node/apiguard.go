package node

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"strings"

	"github.com/herdcluster/herd/api"
)

// apiGuard keeps browsers from being used against the agent API:
//
//   - DNS rebinding: the API answers only to the Host names and addresses
//     it serves (its advertise and bind addresses, every local address
//     when bound to all, its node name, localhost when bound to loopback)
//     and --api-allowed-hosts; anything else is a 421;
//   - cross-site requests: a request with a foreign Origin (any method) is
//     a 403 unless the origin is in --api-allowed-origins, and
//     state-changing ones are checked by net/http's CrossOriginProtection
//     too (Sec-Fetch-Site), which sees requests that send no Origin;
//   - simple-request CSRF: a POST, PUT, PATCH or DELETE with a body needs
//     a JSON content type (415 otherwise), which a cross-site form or
//     no-cors fetch cannot send without a preflight.
//
// /healthz and /readyz stay open to anything (load balancers' probes).
type apiGuard struct {
	hosts   map[string]bool // lower-case host names and canonical IPs
	origins map[string]bool // allowed foreign origins
	scheme  string          // the API's own: "https", or "http" when insecure
	cop     *http.CrossOriginProtection
	next    http.Handler
}

// newAPIGuard guards next for a node configured by cfg.
func newAPIGuard(cfg *Config, next http.Handler) (*apiGuard, error) {
	g := &apiGuard{hosts: map[string]bool{}, origins: map[string]bool{}, scheme: "https", next: next,
		cop: http.NewCrossOriginProtection()}
	if cfg.Insecure {
		g.scheme = "http"
	}
	g.addHost(cfg.Name)
	g.addHost(cfg.advertise())
	bind := net.ParseIP(cfg.BindIP)
	switch {
	case bind == nil:
	case bind.IsUnspecified():
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("agent API: listing the local addresses it answers to: %w", err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				g.addHost(ipn.IP.String())
			}
		}
		g.addHost("localhost")
	default:
		g.addHost(cfg.BindIP)
		if bind.IsLoopback() {
			g.addHost("localhost")
		}
	}
	for _, h := range cfg.APIAllowedHosts {
		if h == "" || strings.ContainsAny(h, "/:@ ") && net.ParseIP(h) == nil {
			return nil, fmt.Errorf("--api-allowed-hosts: %q is not a host name or IP address (no scheme, port or path)", h)
		}
		g.addHost(h)
	}
	for _, o := range cfg.APIAllowedOrigins {
		if err := g.cop.AddTrustedOrigin(o); err != nil {
			return nil, fmt.Errorf("--api-allowed-origins: %q: %v", o, err)
		}
		g.origins[o] = true
	}
	g.cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusForbidden, api.Error{Error: "cross-origin request refused (allow its origin with --api-allowed-origins)", Reason: "origin_not_allowed"})
	}))
	return g, nil
}

func (g *apiGuard) addHost(h string) {
	if ip := net.ParseIP(h); ip != nil {
		g.hosts[ip.String()] = true
		return
	}
	g.hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
}

// hostAllowed reports whether a request's Host names this API.
func (g *apiGuard) hostAllowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip := net.ParseIP(host); ip != nil {
		return g.hosts[ip.String()]
	}
	return host != "" && g.hosts[strings.ToLower(strings.TrimSuffix(host, "."))]
}

func (g *apiGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
		g.next.ServeHTTP(w, r)
		return
	}
	if !g.hostAllowed(r.Host) {
		writeJSON(w, http.StatusMisdirectedRequest, api.Error{
			Error:  "this agent API does not answer to that Host (add it with --api-allowed-hosts)",
			Reason: "host_not_allowed"})
		return
	}
	if o := r.Header.Get("Origin"); o != "" && o != g.scheme+"://"+r.Host && !g.origins[o] {
		writeJSON(w, http.StatusForbidden, api.Error{
			Error:  "cross-origin request refused (allow its origin with --api-allowed-origins)",
			Reason: "origin_not_allowed"})
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		if (r.ContentLength > 0 || len(r.TransferEncoding) > 0) && !jsonContentType(r.Header.Get("Content-Type")) {
			writeJSON(w, http.StatusUnsupportedMediaType, api.Error{
				Error:  "a request that changes something sends a JSON body (Content-Type: application/json) or none",
				Reason: "unsupported_media_type"})
			return
		}
	}
	g.cop.Handler(g.next).ServeHTTP(w, r)
}

// jsonContentType reports whether ct is application/json or a +json type.
func jsonContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}
