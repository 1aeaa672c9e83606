package gateway_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/internal/testnet"
)

// A request whose instance refuses the connection is retried on another
// instance, whatever its method, with its body intact; the answer names the
// instance that served it.
func TestRetryAfterRefusedConnection(t *testing.T) {
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc",
		instanceAt(testnet.Refusing(t), "svc", "dead1", "node-dead1", ""),
		instanceAt(testnet.Refusing(t), "svc", "dead2", "node-dead2", ""),
		good.instance("svc", "node-good", ""),
	)
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	body := bytes.Repeat([]byte("x"), 10_000)
	for i := range 30 {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodPost // not idempotent, but never sent
		}
		res, out := tg.do(t, method, "/svc/x", nil, bytes.NewReader(body))
		if res.StatusCode != http.StatusOK {
			t.Fatalf("request %d (%s): %d %s", i, method, res.StatusCode, out)
		}
		if up := res.Header.Get("X-Herd-Upstream"); up != "node-good" {
			t.Fatalf("request %d answered by %q", i, up)
		}
		if !strings.Contains(string(out), `"body_len":10000`) {
			t.Fatalf("request %d: body not intact: %s", i, out)
		}
	}
}

// 503 from an instance is retried for idempotent requests only; POST gets
// the 503. An instance failing again and again is ejected: after it, it
// sees almost no traffic.
func TestRetryOnlyIdempotentAndEject(t *testing.T) {
	var badHits atomic.Int64
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		badHits.Add(1)
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}))
	t.Cleanup(bad.Close)
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(backendAddr(bad), "svc", "a-bad", "node-bad", ""), good.instance("svc", "node-good", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)

	posts503 := 0
	for range 4 {
		res, _ := tg.do(t, http.MethodPost, "/svc/", nil, strings.NewReader("p"))
		if res.StatusCode == http.StatusServiceUnavailable {
			posts503++
		}
	}
	if posts503 == 0 {
		t.Fatal("a POST answered 503 was retried")
	}
	before := badHits.Load()
	for i := range 40 {
		res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %d: %d", i, res.StatusCode)
		}
	}
	if got := badHits.Load() - before; got > 3 {
		t.Fatalf("the failing instance got %d of 40 GETs after failing %d times; it should be ejected", got, before)
	}
}

// With one instance there is nothing to retry on: the failure is answered.
func TestNoRetryWithoutAnotherInstance(t *testing.T) {
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(testnet.Refusing(t), "svc", "only", "node-only", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil)
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d %s, want 502", res.StatusCode, body)
	}
}

// Bodies over 10 MiB are refused with 413, whether their length is
// declared or they are streamed.
func TestRequestBodyLimit(t *testing.T) {
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", good.instance("svc", "node-good", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	big := bytes.Repeat([]byte("x"), 10<<20+1)
	res, body := tg.do(t, http.MethodPost, "/svc/", nil, bytes.NewReader(big))
	if res.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "body_too_large") {
		t.Fatalf("declared oversized body: %d %s", res.StatusCode, body)
	}
	// io.MultiReader hides the length: the body is sent chunked.
	res, body = tg.do(t, http.MethodPost, "/svc/", nil, io.MultiReader(bytes.NewReader(big)))
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("streamed oversized body: %d %s", res.StatusCode, body)
	}
	res, _ = tg.do(t, http.MethodPost, "/svc/", nil, bytes.NewReader(big[:10<<20]))
	if res.StatusCode != http.StatusOK {
		t.Fatalf("body at the limit: %d", res.StatusCode)
	}
}

// X-Forwarded-For is kept (and appended to) only from trusted proxies.
func TestTrustedProxies(t *testing.T) {
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", good.instance("svc", "node-good", ""))
	hdr := http.Header{"X-Forwarded-For": {"203.0.113.7"}}

	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	if _, s := tg.get(t, "/svc/", hdr); s.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Fatalf("untrusted client: X-Forwarded-For %q, want it replaced", s.Header.Get("X-Forwarded-For"))
	}
	cfg := gateway.DefaultConfig()
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	tg = startGateway(t, cfg, cat, live)
	if _, s := tg.get(t, "/svc/", hdr); s.Header.Get("X-Forwarded-For") != "203.0.113.7, 127.0.0.1" {
		t.Fatalf("trusted proxy: X-Forwarded-For %q, want the chain kept", s.Header.Get("X-Forwarded-For"))
	}
}

// Over the per-client rate limit the gateway answers 429 with Retry-After.
func TestRateLimit(t *testing.T) {
	good := startBackend(t, "good")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", good.instance("svc", "node-good", ""))
	cfg := gateway.DefaultConfig()
	cfg.RateLimit, cfg.RateBurst = 1, 5
	tg := startGateway(t, cfg, cat, live)
	ok, limited := 0, 0
	for range 20 {
		res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil)
		switch res.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			if res.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "rate_limited") {
				t.Fatalf("429 without Retry-After or reason: %v %s", res.Header, body)
			}
		default:
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	if ok < 5 || ok > 6 || limited == 0 {
		t.Fatalf("%d allowed and %d limited of 20 with a burst of 5", ok, limited)
	}
}

// However many requests fail at once, at most half of a service's
// instances are ejected.
func TestEjectionCapUnderConcurrency(t *testing.T) {
	failing := func() *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}))
		t.Cleanup(s.Close)
		return s
	}
	a, b := failing(), failing()
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(backendAddr(a), "svc", "a", "node-a", ""), instanceAt(backendAddr(b), "svc", "b", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 20 {
				res, err := http.Get(tg.url + "/svc/")
				if err == nil {
					res.Body.Close()
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	for _, s := range tg.gw.Stats() {
		if s.Service == "svc" && s.Ejected > 1 {
			t.Fatalf("%d of 2 instances ejected at once", s.Ejected)
		}
	}
}

// A service slow as a whole is not hedged on every request: hedges stay
// under a tenth of the requests (plus a burst of ten), and every request
// is still answered.
func TestHedgesCappedWhenTheServiceIsSlow(t *testing.T) {
	a, b := startSlowBackend(t, 20*time.Millisecond), startSlowBackend(t, 20*time.Millisecond)
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(a, "svc", "a", "node-a", ""), instanceAt(b, "svc", "b", "node-b", ""))
	cfg := gateway.DefaultConfig()
	cfg.HedgeAfter = 2 * time.Millisecond
	tg := startGateway(t, cfg, cat, live)
	const n = 200
	for i := range n {
		res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil)
		if res.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, res.StatusCode)
		}
	}
	var hedges, capped uint64
	for _, s := range tg.gw.Stats() {
		if s.Service == "svc" {
			hedges, capped = s.Hedges, s.HedgesCapped
		}
	}
	if hedges > n/10+10 || capped == 0 || capped > n {
		t.Fatalf("%d requests to a uniformly slow service: %d hedged, %d capped; want at most %d hedged", n, hedges, capped, n/10+10)
	}
	t.Logf("%d requests: %d hedged, %d hedges capped", n, hedges, capped)
}
