package gateway_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
)

// fakeCatalog is an in-memory gateway.Catalog.
type fakeCatalog struct {
	mu sync.Mutex
	m  map[string][]api.Instance
}

func newCatalog() *fakeCatalog { return &fakeCatalog{m: map[string][]api.Instance{}} }

func (c *fakeCatalog) Instances(service string) []api.Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[service]
}

// set replaces the instances of service with a fresh slice (copy on write,
// as the real catalog does).
func (c *fakeCatalog) set(service string, insts ...api.Instance) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[service] = append([]api.Instance(nil), insts...)
}

// fakeLiveness is an in-memory gateway.Liveness; nodes not set are unknown.
type fakeLiveness struct {
	mu sync.Mutex
	m  map[string]string
}

func newLiveness() *fakeLiveness { return &fakeLiveness{m: map[string]string{}} }

func (l *fakeLiveness) NodeStatus(node string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[node]
}

func (l *fakeLiveness) set(node, status string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m[node] = status
}

var (
	_ gateway.Catalog  = (*fakeCatalog)(nil)
	_ gateway.Liveness = (*fakeLiveness)(nil)
)

// seen is what the echo backend reports about the request it received.
type seen struct {
	Backend    string      `json:"backend"`
	Method     string      `json:"method"`
	RequestURI string      `json:"request_uri"`
	Host       string      `json:"host"`
	Header     http.Header `json:"header"`
	BodyLen    int         `json:"body_len"`
	BodySHA256 string      `json:"body_sha256"`
	// ClientCert is the common name of the client certificate the
	// gateway presented, "" over plain HTTP.
	ClientCert string `json:"client_cert,omitempty"`
}

// backend is a real HTTP server that echoes what it received as JSON.
type backend struct {
	name string
	srv  *httptest.Server
	hits atomic.Int64
}

// Request headers that make the echo backend misbehave on purpose.
const (
	hdrUpstreamCORS    = "X-Test-Upstream-Cors"     // answer with CORS headers of its own
	hdrUpstreamHopHop  = "X-Test-Upstream-Hop"      // answer with a Connection-listed header
	hdrUpstreamLiar    = "X-Test-Upstream-Liar"     // answer with its own X-Request-Id and X-Herd-Upstream
	hdrResponseBodyLen = "X-Test-Response-Body-Len" // answer with a body of this many bytes
)

func startBackend(t testing.TB, name string) *backend { return startBackendTLS(t, name, nil) }

// startBackendTLS starts the echo backend serving HTTPS with cfg (plain
// HTTP when nil).
func startBackendTLS(t testing.TB, name string, cfg *tls.Config) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Backend", name)
		if r.Header.Get(hdrUpstreamCORS) != "" {
			w.Header().Set("Access-Control-Allow-Origin", "https://upstream.example")
			w.Header().Set("Access-Control-Allow-Credentials", "true")
		}
		if r.Header.Get(hdrUpstreamHopHop) != "" {
			w.Header().Set("Connection", "X-Bar")
			w.Header().Set("X-Bar", "secret")
		}
		if r.Header.Get(hdrUpstreamLiar) != "" {
			w.Header().Set("X-Request-Id", "from-upstream")
			w.Header().Set("X-Herd-Upstream", "liar")
		}
		if s := r.Header.Get(hdrResponseBodyLen); s != "" {
			size, err := strconv.Atoi(s)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(pattern(size))
			return
		}
		var clientCert string
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			clientCert = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen{
			ClientCert: clientCert,
			Backend:    name,
			Method:     r.Method,
			RequestURI: r.RequestURI,
			Host:       r.Host,
			Header:     r.Header,
			BodyLen:    int(n),
			BodySHA256: hex.EncodeToString(h.Sum(nil)),
		})
	}))
	if cfg != nil {
		b.srv.TLS = cfg
		b.srv.StartTLS()
	} else {
		b.srv.Start()
	}
	t.Cleanup(b.srv.Close)
	return b
}

// instance returns an instance of service served by b.
func (b *backend) instance(service, node, path string) api.Instance {
	return instanceAt(b.srv.Listener.Addr().(*net.TCPAddr), service, b.name, node, path)
}

func instanceAt(addr *net.TCPAddr, service, id, node, path string) api.Instance {
	return api.Instance{
		ID:      id,
		Service: service,
		Node:    node,
		Address: addr.IP.String(),
		Port:    addr.Port,
		Path:    path,
		Weight:  1,
		Health:  api.HealthPassing,
	}
}

// pattern returns n deterministic bytes.
func pattern(n int) []byte {
	patternMu.Lock()
	defer patternMu.Unlock()
	if len(patternBuf) < n {
		patternBuf = make([]byte, max(n, 4<<20))
		for i := range patternBuf {
			patternBuf[i] = byte(i*7 + i/251)
		}
	}
	return patternBuf[:n:n]
}

// The pattern is made once and shared, read only: tests that ask for many
// large bodies at once would otherwise spend seconds of CPU making them
// under -race, and starve what they measure.
var (
	patternMu  sync.Mutex
	patternBuf []byte
)

// testGateway is a gateway serving on a real loopback listener.
type testGateway struct {
	gw     *gateway.Gateway
	addr   string // host:port
	url    string // http://host:port
	client *http.Client
	served chan error // Serve's result
}

func startGateway(t testing.TB, cfg gateway.Config, cat gateway.Catalog, live gateway.Liveness) *testGateway {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	return startGatewayWithLogger(t, cfg, cat, live, logger)
}

// Its answers carry X-Herd-Upstream (Config.DebugHeaders), which most tests
// read to learn which instance served them; startPublicGateway leaves it
// off, as users get it.
func startGatewayWithLogger(t testing.TB, cfg gateway.Config, cat gateway.Catalog, live gateway.Liveness, logger *slog.Logger) *testGateway {
	t.Helper()
	cfg.DebugHeaders = true
	return startGatewayAsIs(t, cfg, cat, live, logger)
}

// startPublicGateway starts a gateway with cfg as it is.
func startPublicGateway(t testing.TB, cfg gateway.Config, cat gateway.Catalog, live gateway.Liveness) *testGateway {
	return startGatewayAsIs(t, cfg, cat, live, slog.New(slog.DiscardHandler))
}

func startGatewayAsIs(t testing.TB, cfg gateway.Config, cat gateway.Catalog, live gateway.Liveness, logger *slog.Logger) *testGateway {
	t.Helper()
	gw, err := gateway.New(cfg, cat, live, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	tg := &testGateway{
		gw:     gw,
		addr:   ln.Addr().String(),
		url:    "http://" + ln.Addr().String(),
		served: make(chan error, 1),
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	tg.client = &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	go func() { tg.served <- gw.Serve(ln) }()
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-tg.served:
			if err != nil {
				t.Errorf("Serve returned %v, want nil after Shutdown", err)
			}
		case <-ctx.Done():
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return tg
}

// do sends a request through the gateway and returns the response with its
// body read.
func (tg *testGateway) do(t testing.TB, method, path string, hdr http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, tg.url+path, body)
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, path, err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	res, err := tg.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return res, b
}

// get sends a GET and decodes the echo backend's report; it fails the test
// unless the answer is 200.
func (tg *testGateway) get(t testing.TB, path string, hdr http.Header) (*http.Response, seen) {
	t.Helper()
	res, body := tg.do(t, http.MethodGet, path, hdr, nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %s", path, res.StatusCode, body)
	}
	var s seen
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("GET %s: decode %q: %v", path, body, err)
	}
	return res, s
}

// decodeError checks that body is an api.Error sent as JSON.
func decodeError(t testing.TB, res *http.Response, body []byte) api.Error {
	t.Helper()
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("decode error body %q: %v", body, err)
	}
	return e
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, 5*time.Second, what, cond)
}

// waitForWithin is waitFor with its own deadline.
func waitForWithin(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for wait := time.Millisecond; !cond(); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(wait)
	}
}

func backendAddr(srv *httptest.Server) *net.TCPAddr { return srv.Listener.Addr().(*net.TCPAddr) }

// logBuffer collects log output safely from many goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
