package gateway_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// Server-sent events reach the client as they are written, not when the
// response ends.
func TestServerSentEventsAreFlushed(t *testing.T) {
	next := make(chan struct{})
	sse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(sse.Close)
	cat, live := newCatalog(), newLiveness()
	cat.set("events", instanceAt(backendAddr(sse), "events", "e1", "node-e", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)

	res, err := http.Get(tg.url + "/events/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	rd := bufio.NewReader(res.Body)
	for i := range 3 {
		got := make(chan string, 1)
		go func() {
			line, _ := rd.ReadString('\n')
			_, _ = rd.ReadString('\n') // the blank line after the event
			got <- line
		}()
		select {
		case line := <-got:
			if want := fmt.Sprintf("data: event %d\n", i); line != want {
				t.Fatalf("event %d: %q, want %q", i, line, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d did not arrive while the stream was open: not flushed", i)
		}
		if i < 2 {
			next <- struct{}{}
		}
	}
	close(next)
}

// Response trailers pass through, and traceparent reaches the upstream.
func TestTrailersAndTraceparent(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("X-Got-Traceparent", r.Header.Get("Traceparent"))
		fmt.Fprint(w, "body")
		w.Header().Set("X-Checksum", "abc123")
	}))
	t.Cleanup(up.Close)
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(backendAddr(up), "svc", "s1", "node-s", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, _ := http.NewRequest(http.MethodGet, tg.url+"/svc/", nil)
	req.Header.Set("Traceparent", tp)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	_, _ = bufio.NewReader(res.Body).WriteTo(&sb)
	res.Body.Close()
	if sb.String() != "body" {
		t.Fatalf("body %q", sb.String())
	}
	if got := res.Trailer.Get("X-Checksum"); got != "abc123" {
		t.Fatalf("trailer X-Checksum %q, want abc123", got)
	}
	if got := res.Header.Get("X-Got-Traceparent"); got != tp {
		t.Fatalf("upstream saw traceparent %q, want %q", got, tp)
	}
}

// A service's own response-header timeout (instance meta) replaces the
// gateway's, longer or shorter.
func TestPerServiceResponseHeaderTimeout(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // the slowness being measured
		case <-time.After(400 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "late")
	}))
	t.Cleanup(slow.Close)
	patient := instanceAt(backendAddr(slow), "patient", "p1", "node-p", "")
	patient.Meta = map[string]string{gateway.MetaResponseHeaderTimeout: "5s"}
	hasty := instanceAt(backendAddr(slow), "hasty", "h1", "node-h", "")
	hasty.Meta = map[string]string{gateway.MetaResponseHeaderTimeout: "50ms"}
	plain := instanceAt(backendAddr(slow), "plain", "x1", "node-x", "")
	cat, live := newCatalog(), newLiveness()
	cat.set("patient", patient)
	cat.set("hasty", hasty)
	cat.set("plain", plain)
	cfg := gateway.DefaultConfig()
	cfg.ResponseHeaderTimeout = 200 * time.Millisecond
	tg := startGateway(t, cfg, cat, live)

	if res, body := tg.do(t, http.MethodGet, "/plain/", nil, nil); res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("gateway timeout 200ms, upstream 400ms: %d %s", res.StatusCode, body)
	}
	if res, body := tg.do(t, http.MethodGet, "/patient/", nil, nil); res.StatusCode != http.StatusOK || string(body) != "late" {
		t.Fatalf("service timeout 5s, upstream 400ms: %d %s", res.StatusCode, body)
	}
	start := time.Now()
	if res, body := tg.do(t, http.MethodGet, "/hasty/", nil, nil); res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("service timeout 50ms, upstream 400ms: %d %s", res.StatusCode, body)
	}
	if d := time.Since(start); d > 350*time.Millisecond {
		t.Fatalf("the 50ms service timeout answered after %s", d)
	}
}
