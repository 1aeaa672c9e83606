package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startServer serves h and counts the connections it accepts.
func startServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func send(t *testing.T, c *Client, req *http.Request) (int, string) {
	t.Helper()
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	return res.StatusCode, string(b)
}

// Requests of every kind, with and without bodies, share one connection
// when each is answered whole.
func TestOnePoolForEveryRequest(t *testing.T) {
	srv, conns := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+string(b))
	})
	c := New(Config{DialTimeout: time.Second, HeaderTimeout: time.Second, MaxIdlePerHost: 4})
	t.Cleanup(c.CloseIdleConnections)
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		body := io.Reader(nil)
		if m != http.MethodGet {
			body = strings.NewReader("data-" + m)
		}
		req, _ := http.NewRequest(m, srv.URL+"/x", body)
		if code, got := send(t, c, req); code != 200 || !strings.HasPrefix(got, m+" ") {
			t.Fatalf("%s: %d %q", m, code, got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("5 requests one after another took %d connections", n)
	}
}

// timeoutOf carries a request's own header timeout.
type timeoutOf time.Duration

func (d timeoutOf) HeaderTimeout() time.Duration { return time.Duration(d) }

// A request's own header timeout (HeaderTimeoutKey) replaces the
// Client's, shorter or longer.
func TestHeaderTimeoutPerRequest(t *testing.T) {
	srv, _ := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		select { // the slowness being measured
		case <-time.After(300 * time.Millisecond):
			_, _ = io.WriteString(w, "late")
		case <-r.Context().Done():
		}
	})
	c := New(Config{DialTimeout: time.Second, HeaderTimeout: 100 * time.Millisecond, MaxIdlePerHost: 4})
	t.Cleanup(c.CloseIdleConnections)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	if _, err := c.RoundTrip(req); err == nil || !isTimeout(err) {
		t.Fatalf("the Client's 100ms against 300ms: %v, want a timeout", err)
	}
	patient := context.WithValue(context.Background(), HeaderTimeoutKey{}, timeoutOf(5*time.Second))
	if code, got := send(t, c, req.WithContext(patient)); code != 200 || got != "late" {
		t.Fatalf("a request's own 5s: %d %q", code, got)
	}
}

// abortable is a request body that never ends until AbortRead.
type abortable struct{ stop chan struct{} }

func (a *abortable) Read(p []byte) (int, error) {
	<-a.stop
	return 0, errors.New("aborted")
}
func (a *abortable) Close() error { return nil }
func (a *abortable) AbortRead() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
}

// An answer that comes while the body is still being written is the
// caller's; once it is read, the body is read no further (AbortRead) and
// the connection is not reused.
func TestAnswerBeforeTheBodyEnds(t *testing.T) {
	srv, conns := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	})
	c := New(Config{DialTimeout: time.Second, HeaderTimeout: time.Second, MaxIdlePerHost: 4})
	t.Cleanup(c.CloseIdleConnections)
	body := &abortable{stop: make(chan struct{})}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, body)
	req.ContentLength = 1 << 20
	if code, _ := send(t, c, req); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("early answer: %d", code)
	}
	select {
	case <-body.stop:
	case <-time.After(5 * time.Second):
		t.Fatal("the body was still being read after its answer ended")
	}
	req, _ = http.NewRequest(http.MethodGet, srv.URL, nil)
	send(t, c, req)
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections: the one whose body was cut short was reused", n)
	}
}

// endless is a body that never ends (and is not in memory: no GetBody).
type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }

// An upstream that takes the head and then stops reading the body is as
// stuck as one that does not answer: the request fails after a header
// timeout without progress, it does not hang.
func TestUpstreamThatStopsReadingTheBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var buf [4096]byte
		_, _ = c.Read(buf[:]) // the head, and no more: the fault
		<-release
	}()
	c := New(Config{DialTimeout: time.Second, HeaderTimeout: 200 * time.Millisecond, MaxIdlePerHost: 4})
	t.Cleanup(c.CloseIdleConnections)
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/upload", io.NopCloser(endless{}))
	start := time.Now()
	_, err = c.RoundTrip(req)
	if err == nil || !isTimeout(err) {
		t.Fatalf("an upstream that stopped reading: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("it took %s", d)
	}
}

// A request's body writer does nothing to its connection once the
// connection went back to the pool: the next request on it, whose context
// lives on, is not failed by the last one's context ending (as every
// request's does when its handler returns) right after its answer.
func TestEndedRequestLeavesItsConnectionAlone(t *testing.T) {
	srv, conns := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	c := New(Config{DialTimeout: time.Second, HeaderTimeout: 10 * time.Second, MaxIdlePerHost: 1})
	t.Cleanup(c.CloseIdleConnections)
	body := strings.Repeat("b", 1000)
	for i := range 3000 {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/x", strings.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }
		res, err := c.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		if err != nil || string(b) != "ok" {
			t.Fatalf("request %d: %q, %v", i, b, err)
		}
	}
	t.Logf("3000 requests took %d connections", conns.Load())
}
