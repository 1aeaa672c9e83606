package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/secure"
)

// startHelloBackend is the cheapest real backend: a fixed short body.
func startHelloBackend(b *testing.B) *httptest.Server { return startHelloBackendTLS(b, nil) }

// startHelloBackendTLS is startHelloBackend serving HTTPS with cfg (plain
// HTTP when nil).
func startHelloBackendTLS(b *testing.B, cfg *tls.Config) *httptest.Server {
	b.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "6")
		_, _ = io.WriteString(w, "hello\n")
	}))
	if cfg != nil {
		srv.TLS = cfg
		srv.StartTLS()
	} else {
		srv.Start()
	}
	b.Cleanup(srv.Close)
	return srv
}

// helloGateway is a gateway routing "hello" to a startHelloBackend, shut
// down at the end of the benchmark.
func helloGateway(b *testing.B) *gateway.Gateway { return helloGatewayTLS(b, false) }

// helloGatewayTLS is helloGateway, with a TLS hop to the backend when
// internal is set: the backend serves a cluster certificate and requires
// one, as a service host does under --internal-tls.
func helloGatewayTLS(b *testing.B, internal bool) *gateway.Gateway {
	b.Helper()
	cfg := gateway.DefaultConfig()
	var backendTLS *tls.Config
	if internal {
		ca, err := secure.NewCA("bench")
		if err != nil {
			b.Fatal(err)
		}
		loopback := []net.IP{net.ParseIP("127.0.0.1")}
		backendTLS = &tls.Config{
			Certificates: []tls.Certificate{issue(b, ca, secure.CertRequest{Name: "host", IPs: loopback})},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		}
		cfg.UpstreamTLS = &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{issue(b, ca, secure.CertRequest{Name: "gw", IPs: loopback})}}
	}
	backend := startHelloBackendTLS(b, backendTLS)
	cat := newCatalog()
	inst := instanceAt(backendAddr(backend), "hello", "hello-1", "node-a", "/hello")
	inst.TLS = internal
	cat.set("hello", inst)
	gw, err := gateway.New(cfg, cat, newLiveness(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
	return gw
}

// discardWriter is a reusable http.ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) Flush()                      {}

// BenchmarkGatewayProxy measures the gateway's handler proxying a GET to a
// real local backend over loopback. Allocations include the backend server
// and the upstream client side of net/http, which BenchmarkDirectBackend
// measures alone: the gateway's own cost is the difference.
func BenchmarkGatewayProxy(b *testing.B) {
	gw := helloGateway(b)
	h := gw.Handler()

	ctx, cancel := context.WithCancel(context.Background()) // like a server's request context
	defer cancel()
	req := httptest.NewRequest(http.MethodGet, "http://gw/hello/world?x=1", nil).WithContext(ctx)
	w := &discardWriter{h: make(http.Header)}

	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.status = 0
		delete(req.Header, "X-Request-Id") // a fresh ID per request, as for most clients
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

// BenchmarkDirectBackend is BenchmarkGatewayProxy's baseline: the same GET
// sent straight to the backend with a transport like the gateway's.
func BenchmarkDirectBackend(b *testing.B) {
	backend := startHelloBackend(b)
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodGet, backend.URL+"/hello/world?x=1", nil)
	if err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	for b.Loop() {
		res, err := tr.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			b.Fatalf("status %d", res.StatusCode)
		}
	}
}

// BenchmarkGatewayProxyParallel is BenchmarkGatewayProxy from many
// goroutines at once: with the CPUs busy, ns/op is close to the CPU cost of
// a proxied request (the sequential benchmark measures latency, idle
// spinning included), which is what bounds throughput under load.
func BenchmarkGatewayProxyParallel(b *testing.B) {
	gw := helloGateway(b)
	h := gw.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest(http.MethodGet, "http://gw/hello/world?x=1", nil).WithContext(ctx)
		w := &discardWriter{h: make(http.Header)}
		for pb.Next() {
			clear(w.h)
			w.status = 0
			delete(req.Header, "X-Request-Id")
			h.ServeHTTP(w, req)
			if w.status != http.StatusOK {
				b.Errorf("status %d", w.status)
				return
			}
		}
	})
}

// rawClient sends keep-alive GETs on one connection and reads the answers
// with no allocation of its own, so that a benchmark's allocations are the
// servers'.
type rawClient struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
}

func dialRaw(b *testing.B, addr, path, extra string) *rawClient {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &rawClient{c: c, br: bufio.NewReaderSize(c, 16<<10),
		req: []byte("GET " + path + " HTTP/1.1\r\nHost: gw\r\nUser-Agent: bench\r\n" + extra + "\r\n")}
}

// get sends one GET and reads its answer, framed by Content-Length.
func (rc *rawClient) get(b *testing.B) {
	if _, err := rc.c.Write(rc.req); err != nil {
		b.Fatal(err)
	}
	n := -1
	status := false
	for {
		line, err := rc.br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if !status {
			if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
				b.Fatalf("answer %q", line)
			}
			status = true
			continue
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n = 0
			for _, c := range bytes.TrimSpace(v) {
				n = n*10 + int(c-'0')
			}
		}
	}
	if n < 0 {
		b.Fatal("answer without Content-Length")
	}
	if _, err := rc.br.Discard(n); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFrontProxy measures a GET through the gateway's own server (the
// front and the express path, as clients reach it) to a real local backend,
// over loopback. Allocations include the backend's, which
// BenchmarkFrontDirect measures alone: the gateway's own are the difference.
func BenchmarkFrontProxy(b *testing.B) { benchmarkFrontProxy(b, false) }

// BenchmarkFrontProxyInternalTLS is BenchmarkFrontProxy with the hop to
// the backend over TLS (--internal-tls), on a pooled connection: the cost
// of the encrypted hop per request.
func BenchmarkFrontProxyInternalTLS(b *testing.B) { benchmarkFrontProxy(b, true) }

func benchmarkFrontProxy(b *testing.B, internalTLS bool) {
	gw := helloGatewayTLS(b, internalTLS)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = gw.Serve(ln) }()
	rc := dialRaw(b, ln.Addr().String(), "/hello/world?x=1", "")
	b.ReportAllocs()
	for b.Loop() {
		rc.get(b)
	}
}

// BenchmarkFrontDirect is BenchmarkFrontProxy's baseline: the same client
// straight to the backend, sending the headers the gateway adds, so that
// the backend's allocations are the same in both.
func BenchmarkFrontDirect(b *testing.B) {
	backend := startHelloBackend(b)
	rc := dialRaw(b, backend.Listener.Addr().String(), "/hello/world?x=1",
		"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Host: gw\r\nX-Forwarded-Proto: http\r\nX-Request-Id: 0123456789abcdef0123456789abcdef\r\n")
	b.ReportAllocs()
	for b.Loop() {
		rc.get(b)
	}
}

// BenchmarkGatewayProxyPost is BenchmarkGatewayProxyParallel for a POST
// with a 1 KiB body: the path requests with bodies take (buffered for a
// retry, written by the upstream client's body writer).
func BenchmarkGatewayProxyPost(b *testing.B) {
	gw := helloGateway(b)
	h := gw.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := bytes.Repeat([]byte("p"), 1<<10)

	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: make(http.Header)}
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, "http://gw/hello/world", bytes.NewReader(payload)).WithContext(ctx)
			clear(w.h)
			w.status = 0
			h.ServeHTTP(w, req)
			if w.status != http.StatusOK {
				b.Errorf("status %d", w.status)
				return
			}
		}
	})
}
