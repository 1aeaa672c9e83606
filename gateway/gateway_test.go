package gateway_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/internal/testnet"
)

func TestRouting(t *testing.T) {
	alpha, beta := startBackend(t, "alpha-1"), startBackend(t, "beta-1")
	cat := newCatalog()
	cat.set("alpha", alpha.instance("alpha", "node-a", ""))
	cat.set("beta", beta.instance("beta", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	tests := []struct {
		method, path         string
		wantBackend, wantURI string
		wantNode             string
	}{
		{http.MethodGet, "/alpha/x", "alpha-1", "/x", "node-a"},
		{http.MethodGet, "/beta/y", "beta-1", "/y", "node-b"},
		{http.MethodDelete, "/beta/y", "beta-1", "/y", "node-b"},
		{"PROPFIND", "/alpha/dav", "alpha-1", "/dav", "node-a"}, // a method net/http does not name
		{http.MethodGet, "/alpha", "alpha-1", "/", "node-a"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			res, body := tg.do(t, tt.method, tt.path, nil, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, body %s", res.StatusCode, body)
			}
			if got := res.Header.Get("X-Backend"); got != tt.wantBackend {
				t.Errorf("served by %q, want %q", got, tt.wantBackend)
			}
			if got := res.Header.Values("X-Herd-Upstream"); len(got) != 1 || got[0] != tt.wantNode {
				t.Errorf("X-Herd-Upstream %q, want [%q]", got, tt.wantNode)
			}
			var s seen
			mustUnmarshal(t, body, &s)
			if s.Method != tt.method || s.RequestURI != tt.wantURI {
				t.Errorf("backend saw %s %s, want %s %s", s.Method, s.RequestURI, tt.method, tt.wantURI)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	cat := newCatalog()
	var backends []*backend
	var insts []api.Instance
	for i, name := range []string{"rr-1", "rr-2", "rr-3"} {
		b := startBackend(t, name)
		backends = append(backends, b)
		insts = append(insts, b.instance("rr", "node-"+string(rune('a'+i)), ""))
	}
	cat.set("rr", insts...)
	cfg := gateway.DefaultConfig()
	cfg.Balancer = gateway.BalancerRoundRobin // the default, p2c, favours the fastest
	tg := startGateway(t, cfg, cat, newLiveness())

	for range 30 {
		tg.get(t, "/rr/", nil)
	}
	for _, b := range backends {
		if got := b.hits.Load(); got != 10 {
			t.Errorf("backend %s got %d of 30 requests, want 10", b.name, got)
		}
	}
}

func TestUpstreamPath(t *testing.T) {
	b := startBackend(t, "paths")
	tests := []struct {
		name    string
		service string
		prefix  string // instance Path
		reqPath string // as sent by the client, query included
		wantURI string // as received by the backend
	}{
		{"trailing slash kept", "hello", "/hello", "/hello/", "/hello/"},
		{"no trailing slash", "hello", "/hello", "/hello", "/hello"},
		{"rest and query", "echo", "/echo", "/echo/a/b?x=1", "/echo/a/b?x=1"},
		{"query without rest", "echo", "/echo", "/echo?x=1", "/echo?x=1"},
		{"empty prefix", "echo", "", "/echo/a/b?x=1", "/a/b?x=1"},
		{"empty prefix bare service", "svc", "", "/svc", "/"},
		{"empty prefix trailing slash", "svc", "", "/svc/", "/"},
		{"escaped slash", "echo", "/echo", "/echo/a%2Fb", "/echo/a%2Fb"},
		{"escaped slash empty prefix", "echo", "", "/echo/a%2Fb/c", "/a%2Fb/c"},
		{"escaped space", "echo", "/echo", "/echo/a%20b", "/echo/a%20b"},
		{"query kept verbatim", "echo", "/echo", "/echo/q?a=%2F&b=x%26y&c", "/echo/q?a=%2F&b=x%26y&c"},
		{"query with semicolon kept", "echo", "/echo", "/echo/q?a=1;b=2", "/echo/q?a=1;b=2"},
		{"query with bad escape kept", "echo", "/echo", "/echo/q?a=%zz", "/echo/q?a=%zz"},
		{"escaped service name", "echo", "/echo", "/%65cho/x", "/echo/x"},
		{"deep prefix", "api", "/v1/api", "/api/users/7", "/v1/api/users/7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat := newCatalog()
			cat.set(tt.service, b.instance(tt.service, "node-a", tt.prefix))
			tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
			_, s := tg.get(t, tt.reqPath, nil)
			if s.RequestURI != tt.wantURI {
				t.Errorf("GET %s with prefix %q reached the backend as %q, want %q", tt.reqPath, tt.prefix, s.RequestURI, tt.wantURI)
			}
		})
	}
}

// Forwarding and hop-by-hop headers are handled alike for requests with
// and without a body (once the lean path and httputil.ReverseProxy, now
// one path).
func TestForwardingHeaders(t *testing.T) {
	b := startBackend(t, "hdr")
	cat := newCatalog()
	cat.set("hdr", b.instance("hdr", "node-h", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			var body io.Reader
			if method == http.MethodPost {
				body = strings.NewReader("payload")
			}
			res, raw := tg.do(t, method, "/hdr/x", http.Header{
				"X-Forwarded-For":     {"6.6.6.6"},
				"X-Forwarded-Host":    {"evil.example"},
				"X-Forwarded-Proto":   {"https"},
				"Forwarded":           {"for=6.6.6.6"},
				"Connection":          {"X-Foo, Keep-Alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Authorization": {"Basic c2VjcmV0"},
				"X-Foo":               {"hop"},
				"Te":                  {"trailers"},
				"X-Kept":              {"a", "b"},
				hdrUpstreamHopHop:     {"1"},
			}, body)
			var s seen
			mustUnmarshal(t, raw, &s)
			checks := []struct {
				name, got, want string
			}{
				{"X-Forwarded-For replaced", strings.Join(s.Header.Values("X-Forwarded-For"), ","), "127.0.0.1"},
				{"X-Forwarded-Host", strings.Join(s.Header.Values("X-Forwarded-Host"), ","), tg.addr},
				{"X-Forwarded-Proto", strings.Join(s.Header.Values("X-Forwarded-Proto"), ","), "http"},
				{"Forwarded stripped", s.Header.Get("Forwarded"), ""},
				{"Connection-listed request header stripped", s.Header.Get("X-Foo"), ""},
				{"Keep-Alive stripped", s.Header.Get("Keep-Alive"), ""},
				{"Proxy-Authorization stripped", s.Header.Get("Proxy-Authorization"), ""},
				{"Te: trailers passed", s.Header.Get("Te"), "trailers"},
				{"other headers kept", strings.Join(s.Header.Values("X-Kept"), ","), "a,b"},
				{"Host is the upstream", s.Host, b.srv.Listener.Addr().String()},
				{"Connection-listed response header stripped", res.Header.Get("X-Bar"), ""},
				{"X-Herd-Upstream", res.Header.Get("X-Herd-Upstream"), "node-h"},
				{"body", strconv.Itoa(s.BodyLen), map[string]string{http.MethodGet: "0", http.MethodPost: "7"}[method]},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	b := startBackend(t, "rid")
	cat := newCatalog()
	cat.set("rid", b.instance("rid", "node-r", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)

	tests := []struct {
		name string
		sent []string // nil: no header
		keep bool     // the sent value must be kept, else a fresh ID generated
	}{
		{"none sent", nil, false},
		{"sane id kept", []string{"req-42.abc_DEF:9"}, true},
		{"128 chars kept", []string{strings.Repeat("x", 128)}, true},
		{"129 chars replaced", []string{strings.Repeat("x", 129)}, false},
		{"space replaced", []string{"a b"}, false},
		{"non-ASCII replaced", []string{"é"}, false},
		{"two values replaced", []string{"one", "two"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{hdrUpstreamLiar: {"1"}}
			if tt.sent != nil {
				hdr["X-Request-Id"] = tt.sent
			}
			res, s := tg.get(t, "/rid/", hdr)
			up := s.Header.Values("X-Request-Id")
			down := res.Header.Values("X-Request-Id")
			if len(up) != 1 || len(down) != 1 || up[0] != down[0] {
				t.Fatalf("upstream got X-Request-Id %q, client got %q: want the same single value", up, down)
			}
			if tt.keep && up[0] != tt.sent[0] {
				t.Errorf("X-Request-Id %q, want the client's %q", up[0], tt.sent[0])
			}
			if !tt.keep && !generated.MatchString(up[0]) {
				t.Errorf("X-Request-Id %q, want a generated 32-hex-digit ID", up[0])
			}
			if got := res.Header.Values("X-Herd-Upstream"); len(got) != 1 || got[0] != "node-r" {
				t.Errorf("X-Herd-Upstream %q, want [node-r] (the upstream's own value dropped)", got)
			}
		})
	}

	t.Run("unique", func(t *testing.T) {
		ids := map[string]bool{}
		for range 20 {
			res, _ := tg.get(t, "/rid/", nil)
			id := res.Header.Get("X-Request-Id")
			if ids[id] {
				t.Fatalf("X-Request-Id %q generated twice", id)
			}
			ids[id] = true
		}
	})
}

func TestErrors(t *testing.T) {
	up := startBackend(t, "up")
	down := testnet.Refusing(t)
	cat := newCatalog()
	cat.set("up", up.instance("up", "node-up", "/up"))
	cat.set("deadsvc",
		up.instance("deadsvc", "node-dead", ""),
		up.instance("deadsvc", "node-left", ""))
	cat.set("downsvc", instanceAt(down, "downsvc", "down-1", "node-down", ""))
	live := newLiveness()
	live.set("node-dead", api.StatusDead)
	live.set("node-left", api.StatusLeft)
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)

	tests := []struct {
		name        string
		method      string
		path        string
		wantStatus  int
		wantReason  string
		wantMessage string // substring
	}{
		{"root", http.MethodGet, "/", http.StatusNotFound, gateway.ReasonNoService, "no service"},
		{"root odd method", "PROPFIND", "/", http.StatusNotFound, gateway.ReasonNoService, "no service"},
		{"invalid name", http.MethodGet, "/Bad_Name/x", http.StatusNotFound, gateway.ReasonNoService, "DNS label"},
		{"dot in name", http.MethodGet, "/favicon.ico", http.StatusNotFound, gateway.ReasonNoService, ""},
		{"escaped slash in name", http.MethodGet, "/up%2Fx/y", http.StatusNotFound, gateway.ReasonNoService, ""},
		{"unknown service", http.MethodGet, "/nosuch/x", http.StatusNotFound, gateway.ReasonUnknownService, `service "nosuch" has no registered instances`},
		{"all dead or left", http.MethodGet, "/deadsvc/x", http.StatusServiceUnavailable, gateway.ReasonNoLiveInstance, "none on a live node"},
		{"upstream down", http.MethodGet, "/downsvc/x", http.StatusBadGateway, gateway.ReasonUpstreamError, "the upstream instance failed (request "},
		{"upstream down POST", http.MethodPost, "/downsvc/x", http.StatusBadGateway, gateway.ReasonUpstreamError, "the upstream instance failed (request "},
		{"dot-dot segment", http.MethodGet, "/up/../admin", http.StatusBadRequest, gateway.ReasonInvalidPath, `".."`},
		{"escaped dot-dot segment", http.MethodGet, "/up/a/%2e%2e/%2E%2E/admin", http.StatusBadRequest, gateway.ReasonInvalidPath, ""},
		// Servlet containers read "..;x" as "..", IIS "..\\" as "../".
		{"dot-dot-semicolon segment", http.MethodGet, "/up/..;/admin", http.StatusBadRequest, gateway.ReasonInvalidPath, `".."`},
		{"dot-dot-semicolon with parameters", http.MethodGet, "/up/a/..;jsessionid=1/admin", http.StatusBadRequest, gateway.ReasonInvalidPath, ""},
		{"escaped dot-dot-semicolon", http.MethodGet, "/up/%2e%2e%3b/admin", http.StatusBadRequest, gateway.ReasonInvalidPath, ""},
		{"dot-dot-backslash", http.MethodGet, "/up/..%5cadmin", http.StatusBadRequest, gateway.ReasonInvalidPath, ""},
		// TRACE would echo the client's cookies back (cross-site tracing).
		{"TRACE", http.MethodTrace, "/up/x", http.StatusMethodNotAllowed, gateway.ReasonMethodNotAllowed, "TRACE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.method == http.MethodPost {
				body = strings.NewReader("payload")
			}
			res, b := tg.do(t, tt.method, tt.path, nil, body)
			if res.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", res.StatusCode, tt.wantStatus, b)
			}
			e := decodeError(t, res, b)
			if e.Reason != tt.wantReason {
				t.Errorf("reason %q, want %q", e.Reason, tt.wantReason)
			}
			if !strings.Contains(e.Error, tt.wantMessage) {
				t.Errorf("error %q does not contain %q", e.Error, tt.wantMessage)
			}
			if res.Header.Get("X-Request-Id") == "" || e.RequestID != res.Header.Get("X-Request-Id") {
				t.Errorf("error answer has X-Request-Id %q and request_id %q", res.Header.Get("X-Request-Id"), e.RequestID)
			}
			// Public errors name no internal address, node or dial error.
			if strings.Contains(string(b), "127.0.0.1") || strings.Contains(string(b), "node-") || strings.Contains(string(b), "dial") {
				t.Errorf("error answer shows internal topology: %s", b)
			}
		})
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("the live backend served %d of the rejected requests, want 0", n)
	}
	// The gateway's own answers are counted by reason; upstream failures
	// are not among them (they are the service's).
	want := map[string]uint64{gateway.ReasonNoService: 5, gateway.ReasonUnknownService: 1,
		gateway.ReasonNoLiveInstance: 1, gateway.ReasonInvalidPath: 6, gateway.ReasonMethodNotAllowed: 1}
	for reason, n := range tg.gw.Rejected() {
		if n != want[reason] {
			t.Errorf("Rejected()[%q] = %d, want %d", reason, n, want[reason])
		}
	}
}

func TestUpstreamTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := startBlockingBackend(t, release)
	cat := newCatalog()
	cat.set("slow", instanceAt(slow.addr(), "slow", "slow-1", "node-s", ""))
	cfg := gateway.DefaultConfig()
	cfg.ResponseHeaderTimeout = 100e6 // 100ms
	tg := startGateway(t, cfg, cat, newLiveness())
	t.Cleanup(func() { close(release) })

	res, body := tg.do(t, http.MethodGet, "/slow/", nil, nil)
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504; body %s", res.StatusCode, body)
	}
	if e := decodeError(t, res, body); e.Reason != gateway.ReasonUpstreamTimeout {
		t.Errorf("reason %q, want %q", e.Reason, gateway.ReasonUpstreamTimeout)
	}
}

func TestLiveness(t *testing.T) {
	a, s, d, u := startBackend(t, "on-alive"), startBackend(t, "on-suspect"), startBackend(t, "on-dead"), startBackend(t, "on-unknown")
	live := newLiveness()
	steps := []struct {
		name   string
		status map[string]string // node -> status to set before the step
		insts  []*backend        // instances of the service in this step
		want   string            // backend all requests must reach; "" means 503
	}{
		{"alive preferred over suspect and dead",
			map[string]string{"n-alive": api.StatusAlive, "n-suspect": api.StatusSuspect, "n-dead": api.StatusDead},
			[]*backend{s, a, d}, "on-alive"},
		{"suspect as last resort",
			map[string]string{"n-alive": api.StatusDead},
			[]*backend{s, a, d}, "on-suspect"},
		{"unknown node counts as alive",
			nil,
			[]*backend{s, u, d}, "on-unknown"},
		{"suspect node left",
			map[string]string{"n-suspect": api.StatusLeft},
			[]*backend{s, a, d}, ""},
		{"recovered",
			map[string]string{"n-alive": api.StatusAlive},
			[]*backend{s, a, d}, "on-alive"},
	}
	nodeOf := map[*backend]string{a: "n-alive", s: "n-suspect", d: "n-dead", u: "n-unknown"}
	cat := newCatalog()
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			for node, status := range st.status {
				live.set(node, status)
			}
			var insts []api.Instance
			for _, b := range st.insts {
				insts = append(insts, b.instance("lv", nodeOf[b], ""))
			}
			cat.set("lv", insts...)
			for range 6 {
				res, body := tg.do(t, http.MethodGet, "/lv/", nil, nil)
				if st.want == "" {
					if res.StatusCode != http.StatusServiceUnavailable {
						t.Fatalf("status %d, want 503; body %s", res.StatusCode, body)
					}
					if e := decodeError(t, res, body); e.Reason != gateway.ReasonNoLiveInstance {
						t.Errorf("reason %q, want %q", e.Reason, gateway.ReasonNoLiveInstance)
					}
					continue
				}
				if got := res.Header.Get("X-Backend"); res.StatusCode != http.StatusOK || got != st.want {
					t.Fatalf("status %d from %q, want 200 from %q", res.StatusCode, got, st.want)
				}
			}
		})
	}
}

func TestCORS(t *testing.T) {
	b := startBackend(t, "cors")
	cat := newCatalog()
	cat.set("app", b.instance("app", "node-c", ""))
	const allowed = "https://app.example.com"

	type want struct {
		status      int
		proxied     bool
		allowOrigin string // "" means no Access-Control-* header at all
		vary        bool
	}
	tests := []struct {
		name     string
		origins  []string
		method   string
		path     string
		hdr      http.Header
		want     want
		noCredit bool // the upstream's own Access-Control-Allow-Credentials must be gone
	}{
		{"allowed origin", []string{allowed, "http://localhost:3000"}, http.MethodGet, "/app/x",
			http.Header{"Origin": {allowed}}, want{200, true, allowed, true}, false},
		{"star", []string{"*"}, http.MethodGet, "/app/x",
			http.Header{"Origin": {"https://any.example"}}, want{200, true, "*", false}, false},
		{"upstream CORS replaced", []string{allowed}, http.MethodGet, "/app/x",
			http.Header{"Origin": {allowed}, hdrUpstreamCORS: {"1"}}, want{200, true, allowed, true}, true},
		{"disallowed origin", []string{allowed}, http.MethodGet, "/app/x",
			http.Header{"Origin": {"https://evil.example"}}, want{200, true, "", false}, false},
		{"no origin header", []string{allowed}, http.MethodGet, "/app/x",
			nil, want{200, true, "", false}, false},
		{"no config", nil, http.MethodGet, "/app/x",
			http.Header{"Origin": {allowed}}, want{200, true, "", false}, false},
		{"preflight answered", []string{allowed}, http.MethodOptions, "/app/x",
			http.Header{"Origin": {allowed}, "Access-Control-Request-Method": {"PUT"}}, want{204, false, allowed, true}, false},
		{"preflight star answered", []string{"*"}, http.MethodOptions, "/app/x",
			http.Header{"Origin": {allowed}, "Access-Control-Request-Method": {"PUT"}}, want{204, false, "*", false}, false},
		{"preflight disallowed proxied", []string{allowed}, http.MethodOptions, "/app/x",
			http.Header{"Origin": {"https://evil.example"}, "Access-Control-Request-Method": {"PUT"}}, want{200, true, "", false}, false},
		{"preflight no config proxied", nil, http.MethodOptions, "/app/x",
			http.Header{"Origin": {allowed}, "Access-Control-Request-Method": {"PUT"}}, want{200, true, "", false}, false},
		{"plain OPTIONS proxied", []string{allowed}, http.MethodOptions, "/app/x",
			http.Header{"Origin": {allowed}}, want{200, true, allowed, true}, false},
		{"error answer readable", []string{allowed}, http.MethodGet, "/nosuch/x",
			http.Header{"Origin": {allowed}}, want{404, false, allowed, true}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := gateway.DefaultConfig()
			cfg.CORSOrigins = tt.origins
			tg := startGateway(t, cfg, cat, newLiveness())
			before := b.hits.Load()
			res, body := tg.do(t, tt.method, tt.path, tt.hdr, nil)
			if res.StatusCode != tt.want.status {
				t.Fatalf("status %d, want %d; body %s", res.StatusCode, tt.want.status, body)
			}
			if proxied := b.hits.Load() != before; proxied != tt.want.proxied {
				t.Errorf("proxied = %v, want %v", proxied, tt.want.proxied)
			}
			if tt.want.allowOrigin == "" {
				for k := range res.Header {
					if strings.HasPrefix(k, "Access-Control-") {
						t.Errorf("unexpected %s: %q", k, res.Header[k])
					}
				}
				return
			}
			wantHdr := map[string]string{
				"Access-Control-Allow-Origin":  tt.want.allowOrigin,
				"Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
				"Access-Control-Allow-Headers": "X-Requested-With, Content-Type",
				"Access-Control-Max-Age":       "600",
			}
			for k, v := range wantHdr {
				if got := res.Header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want exactly [%q]", k, got, v)
				}
			}
			varyOrigin := false
			for _, v := range res.Header.Values("Vary") {
				varyOrigin = varyOrigin || strings.Contains(v, "Origin")
			}
			if varyOrigin != tt.want.vary {
				t.Errorf("Vary %q: has Origin = %v, want %v", res.Header.Values("Vary"), varyOrigin, tt.want.vary)
			}
			if tt.noCredit && res.Header.Get("Access-Control-Allow-Credentials") != "" {
				t.Errorf("upstream's Access-Control-Allow-Credentials leaked through")
			}
		})
	}
}

func TestBodyStreaming(t *testing.T) {
	b := startBackend(t, "body")
	cat := newCatalog()
	cat.set("body", b.instance("body", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	t.Run("request body", func(t *testing.T) {
		payload := make([]byte, 1<<20)
		if _, err := rand.Read(payload); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(payload)
		res, body := tg.do(t, http.MethodPost, "/body/upload", nil, bytes.NewReader(payload))
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", res.StatusCode, body)
		}
		var s seen
		mustUnmarshal(t, body, &s)
		if s.BodyLen != len(payload) || s.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("backend got %d bytes (sha256 %s), want %d (%x)", s.BodyLen, s.BodySHA256, len(payload), sum)
		}
	})
	t.Run("response body", func(t *testing.T) {
		const size = 1<<20 + 17
		res, body := tg.do(t, http.MethodGet, "/body/download", http.Header{hdrResponseBodyLen: {"1048593"}}, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d", res.StatusCode)
		}
		if !bytes.Equal(body, pattern(size)) {
			t.Errorf("got %d bytes, want the backend's %d bytes intact", len(body), size)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(*gateway.Config)
		wantField string // "" means valid
	}{
		{"default", func(*gateway.Config) {}, ""},
		{"zero is valid", func(c *gateway.Config) { *c = gateway.Config{} }, ""},
		{"origins", func(c *gateway.Config) { c.CORSOrigins = []string{"https://a.example", "http://localhost:3000"} }, ""},
		{"star", func(c *gateway.Config) { c.CORSOrigins = []string{"*"} }, ""},
		{"negative dial", func(c *gateway.Config) { c.DialTimeout = -1 }, "DialTimeout"},
		{"negative response header", func(c *gateway.Config) { c.ResponseHeaderTimeout = -1 }, "ResponseHeaderTimeout"},
		{"negative read header", func(c *gateway.Config) { c.ReadHeaderTimeout = -1 }, "ReadHeaderTimeout"},
		{"negative idle", func(c *gateway.Config) { c.IdleTimeout = -1 }, "IdleTimeout"},
		{"negative idle conns", func(c *gateway.Config) { c.MaxIdleConnsPerHost = -1 }, "MaxIdleConnsPerHost"},
		{"star with others", func(c *gateway.Config) { c.CORSOrigins = []string{"*", "https://a.example"} }, "CORSOrigins"},
		{"origin with path", func(c *gateway.Config) { c.CORSOrigins = []string{"https://a.example/"} }, "CORSOrigins[0]"},
		{"origin without scheme", func(c *gateway.Config) { c.CORSOrigins = []string{"a.example"} }, "CORSOrigins[0]"},
		{"upper-case origin", func(c *gateway.Config) { c.CORSOrigins = []string{"https://ok.example", "https://A.example"} }, "CORSOrigins[1]"},
		{"null origin", func(c *gateway.Config) { c.CORSOrigins = []string{"null"} }, "CORSOrigins[0]"},
		{"empty origin", func(c *gateway.Config) { c.CORSOrigins = []string{""} }, "CORSOrigins[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := gateway.DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error naming %s", tt.wantField)
			}
			if !errors.Is(err, gateway.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("Validate: %v, want ErrInvalidConfig naming %s", err, tt.wantField)
			}
			if _, nerr := gateway.New(cfg, newCatalog(), newLiveness(), nil); !errors.Is(nerr, gateway.ErrInvalidConfig) {
				t.Errorf("New with invalid config: %v, want ErrInvalidConfig", nerr)
			}
		})
	}
}

func TestNewRejectsNilDependencies(t *testing.T) {
	if _, err := gateway.New(gateway.DefaultConfig(), nil, newLiveness(), nil); err == nil {
		t.Error("New with nil Catalog: nil error")
	}
	if _, err := gateway.New(gateway.DefaultConfig(), newCatalog(), nil, nil); err == nil {
		t.Error("New with nil Liveness: nil error")
	}
}

func mustUnmarshal(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
}
