package gateway_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// An upstream that answers before it has read the body (a 413 from its
// own limit) has its answer reach the client, not a broken pipe: the body
// is written while the answer is awaited.
func TestUpstreamAnswersBeforeTheBody(t *testing.T) {
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large for me", http.StatusRequestEntityTooLarge)
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	res, body := tg.do(t, http.MethodPost, "/svc/upload", nil, bytes.NewReader(pattern(10<<10)))
	if res.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "too large for me") {
		t.Fatalf("a buffered body: %d %q, want the upstream's own 413", res.StatusCode, body)
	}
	// A streamed body (4 MiB announced) whose client sends 100 KiB and
	// then waits: the answer comes all the same.
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write(pattern(100 << 10)) }()
	req, err := http.NewRequest(http.MethodPost, tg.url+"/svc/upload", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = 4 << 20
	res, err = tg.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "too large for me") {
		t.Fatalf("a streamed body: %d %q, want the upstream's own 413", res.StatusCode, body)
	}
}

// A body of unknown length goes upstream chunked, with its trailers; one
// of known length with its length. Both arrive whole.
func TestRequestBodyFraming(t *testing.T) {
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "len=%d te=%v cl=%d sum=%q n=%d", len(b), r.TransferEncoding, r.ContentLength, r.Trailer.Get("X-Sum"), bytes.Count(b, []byte("x")))
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	// Unknown length: the client sends it chunked, with a trailer.
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, tg.url+"/svc/chunked", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{"X-Sum": nil}
	go func() {
		_, _ = pw.Write(bytes.Repeat([]byte("x"), 100<<10))
		req.Trailer.Set("X-Sum", "s-42")
		_ = pw.Close()
	}()
	res, err := tg.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if want := `len=102400 te=[chunked] cl=-1 sum="s-42" n=102400`; string(body) != want {
		t.Fatalf("chunked body: %q, want %q", body, want)
	}

	res, body = tg.do(t, http.MethodPut, "/svc/known", nil, strings.NewReader(strings.Repeat("x", 70<<10)))
	if want := `len=71680 te=[] cl=71680 sum="" n=71680`; res.StatusCode != http.StatusOK || string(body) != want {
		t.Fatalf("known length: %d %q, want %q", res.StatusCode, body, want)
	}
}

// A request with a body is not lost to a pooled connection its upstream
// has closed (the gateway's stock transport answered such a POST 502): the
// close is found before the request goes out, and an idempotent request
// that meets it on the way is sent again, body and all. No failure is
// counted.
func TestBodyAfterTheUpstreamClosedItsIdleConnection(t *testing.T) {
	var got atomic.Value
	srv, cc := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(string(b))
		_, _ = io.WriteString(w, "ok")
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for i := range 3 {
		want := fmt.Sprintf("body %d", i)
		method := []string{http.MethodPost, http.MethodPut}[i%2]
		if res, body := tg.do(t, method, "/svc/", nil, strings.NewReader(want)); res.StatusCode != http.StatusOK || got.Load() != want {
			t.Fatalf("request %d: %d %q, upstream read %q", i, res.StatusCode, body, got.Load())
		}
		srv.CloseClientConnections()
		waitFor(t, "the upstream to close its end", func() bool { return cc.closed.Load() == cc.opened.Load() })
	}
	for _, s := range tg.gw.Stats() {
		if s.UpstreamErrors != 0 {
			t.Fatalf("closed idle connections counted as failures: %+v", s)
		}
	}
}

// The response-header timeout runs from the end of the body, as
// http.Transport's does: an upload that takes longer than it passes, and
// an upstream silent after the body is cut off by it.
func TestHeaderTimeoutRunsFromTheBodysEnd(t *testing.T) {
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/silent" {
			<-r.Context().Done()
			return
		}
		fmt.Fprintf(w, "read %d", n)
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	cfg := gateway.DefaultConfig()
	cfg.ResponseHeaderTimeout = 300 * time.Millisecond
	tg := startGateway(t, cfg, cat, newLiveness())

	pr, pw := io.Pipe()
	go func() {
		// The slow client being served: 8 parts, 100 ms apart.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range 8 {
			<-tick.C
			if _, err := pw.Write([]byte("part;")); err != nil {
				return
			}
		}
		_ = pw.Close()
	}()
	start := time.Now()
	res, body := tg.do(t, http.MethodPost, "/svc/upload", nil, pr)
	if res.StatusCode != http.StatusOK || string(body) != "read 40" {
		t.Fatalf("an upload of %s with a 300ms header timeout: %d %q", time.Since(start).Round(time.Millisecond), res.StatusCode, body)
	}
	res, body = tg.do(t, http.MethodPost, "/svc/silent", nil, strings.NewReader("hello"))
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("silent after the body: %d %q, want 504", res.StatusCode, body)
	}
}
