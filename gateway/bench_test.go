package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/herdcluster/herd/gateway"
)

// startHelloBackend is the cheapest real backend: a fixed short body.
func startHelloBackend(b *testing.B) *httptest.Server {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "6")
		_, _ = io.WriteString(w, "hello\n")
	}))
	b.Cleanup(srv.Close)
	return srv
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
	backend := startHelloBackend(b)
	cat := newCatalog()
	cat.set("hello", instanceAt(backendAddr(backend), "hello", "hello-1", "node-a", "/hello"))
	gw, err := gateway.New(gateway.DefaultConfig(), cat, newLiveness(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
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
	backend := startHelloBackend(b)
	cat := newCatalog()
	cat.set("hello", instanceAt(backendAddr(backend), "hello", "hello-1", "node-a", "/hello"))
	gw, err := gateway.New(gateway.DefaultConfig(), cat, newLiveness(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
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
