package gateway_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// connCounter counts the connections a test backend accepts and closes.
type connCounter struct{ opened, closed atomic.Int64 }

func (c *connCounter) track(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		c.opened.Add(1)
	case http.StateClosed, http.StateHijacked:
		c.closed.Add(1)
	}
}

// startCountingBackend serves h and counts its connections.
func startCountingBackend(t *testing.T, h http.HandlerFunc) (*httptest.Server, *connCounter) {
	t.Helper()
	cc := &connCounter{}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = cc.track
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, cc
}

// Requests one after another share one upstream connection, whatever the
// method and whether the answer has a body; an answer that asks to close
// the connection is not followed by another on it.
func TestUpstreamConnectionReuse(t *testing.T) {
	srv, cc := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/cached":
			w.WriteHeader(http.StatusNotModified)
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye\n")
		case "/chunked":
			_, _ = io.WriteString(w, "one\n")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "two\n")
		default:
			_, _ = io.WriteString(w, "hello\n")
		}
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	for _, rq := range []struct{ method, path, body string }{
		{http.MethodGet, "/svc/", "hello\n"},
		{http.MethodHead, "/svc/", ""},
		{http.MethodGet, "/svc/empty", ""},
		{http.MethodGet, "/svc/cached", ""},
		{http.MethodOptions, "/svc/", "hello\n"},
		{http.MethodDelete, "/svc/", "hello\n"},
		{http.MethodGet, "/svc/chunked", "one\ntwo\n"},
		{http.MethodGet, "/svc/", "hello\n"},
	} {
		res, body := tg.do(t, rq.method, rq.path, nil, nil)
		if res.StatusCode >= 400 || string(body) != rq.body {
			t.Fatalf("%s %s: %d %q, want %q", rq.method, rq.path, res.StatusCode, body, rq.body)
		}
	}
	if n := cc.opened.Load(); n != 1 {
		t.Fatalf("8 requests in a row opened %d upstream connections, want 1", n)
	}
	for range 3 {
		if res, body := tg.do(t, http.MethodGet, "/svc/close", nil, nil); res.StatusCode != http.StatusOK || string(body) != "bye\n" {
			t.Fatalf("GET /svc/close: %d %q", res.StatusCode, body)
		}
	}
	if n := cc.opened.Load(); n != 3 {
		t.Fatalf("3 answers with Connection: close: %d connections in all, want 3 (the first on the one already open)", n)
	}
}

// An idle upstream connection that the upstream closed does not fail the
// next request: it goes out again on a new connection, and reaches the
// upstream once.
func TestUpstreamClosedIdleConnection(t *testing.T) {
	var hits atomic.Int64
	srv, cc := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "hello\n")
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for i := range 3 {
		if res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.StatusCode != http.StatusOK || string(body) != "hello\n" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
		srv.CloseClientConnections()
		waitFor(t, "the upstream to close its end", func() bool { return cc.closed.Load() == cc.opened.Load() })
	}
	if n := hits.Load(); n != 3 {
		t.Fatalf("3 requests reached the upstream %d times", n)
	}
	for _, s := range tg.gw.Stats() {
		if s.UpstreamErrors != 0 || s.Retries != 0 {
			t.Fatalf("stale connections counted as failures: %+v", s)
		}
	}
}

// A client that hangs up in the middle of a streamed answer takes the
// upstream connection down with it; the next request gets a new one.
func TestUpstreamConnectionClosedWithClient(t *testing.T) {
	release := make(chan struct{})
	srv, cc := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			select { // the rest never comes while the client is there
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, "hello\n")
	})
	t.Cleanup(func() { close(release) })
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.url+"/svc/stream", nil)
	res, err := tg.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
	res.Body.Close()
	waitFor(t, "the upstream connection to close", func() bool { return cc.closed.Load() == 1 })
	if res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.StatusCode != http.StatusOK || string(body) != "hello\n" {
		t.Fatalf("after the hang-up: %d %q", res.StatusCode, body)
	}
	if n := cc.opened.Load(); n != 2 {
		t.Fatalf("%d upstream connections, want 2", n)
	}
}

// What the upstream client writes upstream: the request line with the query as
// sent (an empty one too), and the client's User-Agent or none at all
// (never Go's).
func TestUpstreamRequestLine(t *testing.T) {
	b := startBackend(t, "line")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "node-l", "/base"))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	tests := []struct {
		name, method, path string
		ua                 []string
		wantURI, wantUA    string
	}{
		{"query", http.MethodGet, "/svc/a%2Fb?x=1&y=%zz", []string{"curl/8"}, "/base/a%2Fb?x=1&y=%zz", "curl/8"},
		{"empty query", http.MethodGet, "/svc/a?", []string{"curl/8"}, "/base/a?", "curl/8"},
		{"no user agent", http.MethodDelete, "/svc/", []string{""}, "/base/", ""},
		{"put without a body", http.MethodPut, "/svc/k", []string{"app/1"}, "/base/k", "app/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, raw := tg.do(t, tt.method, tt.path, http.Header{"User-Agent": tt.ua}, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("%d %s", res.StatusCode, raw)
			}
			var s seen
			mustUnmarshal(t, raw, &s)
			if s.Method != tt.method || s.RequestURI != tt.wantURI || s.Header.Get("User-Agent") != tt.wantUA {
				t.Fatalf("upstream saw %s %s with User-Agent %q, want %s %s and %q",
					s.Method, s.RequestURI, s.Header.Get("User-Agent"), tt.method, tt.wantURI, tt.wantUA)
			}
		})
	}
}

// An upstream that does not answer on a reused connection is not asked
// again on a new one: the client waits one response-header timeout, not
// two, and the upstream sees the request once.
func TestUpstreamTimeoutOnReusedConnection(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 {
			select { // hung
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, "hello\n")
	})
	t.Cleanup(func() { close(release) })
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	cfg := gateway.DefaultConfig()
	cfg.ResponseHeaderTimeout = 300 * time.Millisecond
	tg := startGateway(t, cfg, cat, newLiveness())
	if res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d", res.StatusCode)
	}
	start := time.Now()
	res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil)
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("hung upstream: %d %s, want 504", res.StatusCode, body)
	}
	if n := hits.Load(); n != 2 {
		t.Fatalf("the upstream saw %d requests, want 2", n)
	}
	if d := time.Since(start); d >= 2*cfg.ResponseHeaderTimeout {
		t.Fatalf("504 after %s: the timeout was waited out twice", d)
	}
}

// An answer followed by bytes it did not announce leaves its connection
// unusable: the next request goes out on a new one.
func TestUpstreamExtraBytesAfterAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					// Content-Length says 3, then comes more.
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nEXTRA"); err != nil {
						return
					}
				}
			}()
		}
	}()
	cat := newCatalog()
	cat.set("svc", instanceAt(ln.Addr().(*net.TCPAddr), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for i := range 3 {
		if res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.StatusCode != http.StatusOK || string(body) != "ok\n" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d upstream connections for 3 requests, want 3", n)
	}
}
