package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
)

// blockingBackend holds every request until release is closed or the
// request is cancelled.
type blockingBackend struct {
	srv     *httptest.Server
	arrived chan struct{} // one value per request that reached the handler
	aborted chan struct{} // one value per request cancelled before release
}

func startBlockingBackend(t testing.TB, release <-chan struct{}) *blockingBackend {
	t.Helper()
	bb := &blockingBackend{arrived: make(chan struct{}, 64), aborted: make(chan struct{}, 64)}
	bb.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bb.arrived <- struct{}{}
		select {
		case <-release:
			_, _ = io.WriteString(w, "released")
		case <-r.Context().Done():
			bb.aborted <- struct{}{}
		}
	}))
	t.Cleanup(bb.srv.Close)
	return bb
}

func (bb *blockingBackend) addr() *net.TCPAddr { return bb.srv.Listener.Addr().(*net.TCPAddr) }

// recv waits for a value on ch, failing the test after a deadline.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type result struct {
	status int
	body   string
	err    error
}

// getAsync sends a GET through the gateway in the background.
func getAsync(tg *testGateway, path string) <-chan result {
	done := make(chan result, 1)
	go func() {
		res, err := tg.client.Get(tg.url + path)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		done <- result{status: res.StatusCode, body: string(b), err: err}
	}()
	return done
}

func refusesConnections(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	release := make(chan struct{})
	bb := startBlockingBackend(t, release)
	cat := newCatalog()
	cat.set("slow", instanceAt(bb.addr(), "slow", "slow-1", "node-s", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	done := getAsync(tg, "/slow/")
	recv(t, bb.arrived, "the request to reach the backend")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- tg.gw.Shutdown(ctx) }()

	// Shutdown has begun once the listener is gone; the request is still
	// held by the backend, so Shutdown must still be waiting.
	waitFor(t, "the gateway to stop accepting", refusesConnections(tg.addr))
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case r := <-done:
		t.Fatalf("in-flight request ended early: %+v", r)
	default:
	}

	close(release)
	if r := recv(t, done, "the in-flight request"); r.err != nil || r.status != http.StatusOK || r.body != "released" {
		t.Errorf("in-flight request: status %d body %q err %v, want 200 \"released\"", r.status, r.body, r.err)
	}
	if err := recv(t, shut, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := tg.gw.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := recv(t, tg.served, "Serve to return"); err != nil {
		t.Errorf("Serve: %v, want nil", err)
	}
	tg.served <- nil // for the cleanup's check
}

func TestShutdownBeforeServe(t *testing.T) {
	gw, err := gateway.New(gateway.DefaultConfig(), newCatalog(), newLiveness(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := gw.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown #%d: %v", i+1, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Serve(ln); err != nil {
		t.Errorf("Serve after Shutdown: %v, want nil", err)
	}
	if !refusesConnections(ln.Addr().String())() {
		t.Errorf("listener still accepts after Serve returned")
	}
}

func TestShutdownDeadlineAbortsInFlight(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	bb := startBlockingBackend(t, release)
	cat := newCatalog()
	cat.set("slow", instanceAt(bb.addr(), "slow", "slow-1", "node-s", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	done := getAsync(tg, "/slow/")
	recv(t, bb.arrived, "the request to reach the backend")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := tg.gw.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	recv(t, bb.aborted, "the upstream request to be cancelled")
	if r := recv(t, done, "the aborted request"); r.err == nil && r.status == http.StatusOK {
		t.Errorf("request survived a Shutdown that gave up: status %d body %q", r.status, r.body)
	}
	if err := tg.gw.Shutdown(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Shutdown: %v, want the first one's result", err)
	}
}

// startTunnelBackend answers "Upgrade: websocket" requests by switching
// protocols and echoing lines back (no WebSocket framing: the gateway
// tunnels bytes, whatever they are).
func startTunnelBackend(t testing.TB) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want Upgrade: websocket", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := brw.WriteString(line); err != nil || brw.Flush() != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestUpgradeTunnel(t *testing.T) {
	backendSrv := startTunnelBackend(t)
	cat := newCatalog()
	cat.set("ws", instanceAt(backendSrv.Listener.Addr().(*net.TCPAddr), "ws", "ws-1", "node-w", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	conn, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = io.WriteString(conn, "GET /ws/ HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("X-Herd-Upstream") != "node-w" {
		t.Fatalf("status %d, X-Herd-Upstream %q: want 101 from node-w", res.StatusCode, res.Header.Get("X-Herd-Upstream"))
	}
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q, %v", line, err)
	}

	// An open tunnel keeps Shutdown waiting until its deadline, then is cut.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := tg.gw.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with an open tunnel: %v, want context.DeadlineExceeded", err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || strings.TrimSpace(string(rest)) != "" {
		t.Errorf("tunnel after Shutdown: read %q, %v; want a clean close", rest, err)
	}
}

func TestClientGoneIsNotAnUpstreamError(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	bb := startBlockingBackend(t, release)
	cat := newCatalog()
	cat.set("slow", instanceAt(bb.addr(), "slow", "slow-1", "node-s", ""))
	var logs logBuffer
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil))
	tg := startGatewayWithLogger(t, gateway.DefaultConfig(), cat, newLiveness(), logger)

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tg.url+"/slow/", nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		res, err := tg.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	recv(t, bb.arrived, "the request to reach the backend")
	cancel()
	if err := recv(t, errc, "the cancelled request"); !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v, want context.Canceled", err)
	}
	recv(t, bb.aborted, "the upstream request to be cancelled")

	// Shutdown returns once the gateway's handler has finished.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := tg.gw.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if strings.Contains(logs.String(), "upstream request failed") {
		t.Errorf("a client that went away was logged as an upstream failure:\n%s", logs.String())
	}
}

// Shutdown also ends the hedge attempts that outlived their requests: no
// goroutine of the gateway's is left once it returns.
func TestShutdownStopsHedgeLosers(t *testing.T) {
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	// The first attempt goes to the hung instance (the good one is on a
	// suspect node), the hedge after 30 ms to the good one; the hung
	// attempt is still out, for up to 250 ms, when the answer is in.
	cat.set("svc", instanceAt(hungAddr(t), "svc", "hung", "node-hung", ""), good.instance("svc", "node-good", ""))
	live.set("node-hung", api.StatusAlive)
	live.set("node-good", api.StatusSuspect)
	cfg := gateway.DefaultConfig()
	cfg.HedgeAfter = 30 * time.Millisecond
	cfg.DebugHeaders = true
	gw, err := gateway.New(cfg, cat, live, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	tr := &http.Transport{}
	res, err := (&http.Client{Transport: tr}).Get("http://" + ln.Addr().String() + "/svc/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	tr.CloseIdleConnections()
	if res.Header.Get("X-Herd-Upstream") != "node-good" {
		t.Fatalf("answered by %q, want node-good (by the hedge)", res.Header.Get("X-Herd-Upstream"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := gw.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Shutdown waits for every attempt's Done; an attempt that has called
	// it may still be on its way out of its last line for an instant, so
	// the stacks are polled for a moment, not read once.
	var left string
	deadline := time.Now().Add(time.Second)
	for left = hedgeGoroutine(); left != "" && time.Now().Before(deadline); left = hedgeGoroutine() {
		<-time.After(time.Millisecond)
	}
	if left != "" {
		t.Fatalf("a hedge attempt outlived Shutdown:\n%s", left)
	}
}

// hedgeGoroutine returns the stack of a goroutine of the gateway's retry
// transport, or "" when there is none.
func hedgeGoroutine() string {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for g := range strings.SplitSeq(stacks, "\n\n") {
		if strings.Contains(g, "herd/gateway.(*retryTransport)") {
			return g
		}
	}
	return ""
}
