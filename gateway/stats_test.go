package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

func statsOf(gw *gateway.Gateway, service string) gateway.ServiceStats {
	for _, s := range gw.Stats() {
		if s.Service == service {
			return s
		}
	}
	return gateway.ServiceStats{}
}

// The request-duration histogram counts whole requests, body included,
// where the upstream latency histogram stops at the response headers.
func TestRequestDurationHistogram(t *testing.T) {
	const bodyDelay = 60 * time.Millisecond
	slowBody := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // headers now, the body later
		<-time.After(bodyDelay)
		_, _ = w.Write([]byte("done\n"))
	}))
	t.Cleanup(slowBody.Close)
	fast := startBackend(t, "fast")
	cat, live := newCatalog(), newLiveness()
	cat.set("slow", instanceAt(backendAddr(slowBody), "slow", "slow-1", "node-a", ""))
	cat.set("fast", fast.instance("fast", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)

	for range 3 {
		if res, body := tg.do(t, http.MethodGet, "/slow/", nil, nil); res.StatusCode != http.StatusOK || string(body) != "done\n" {
			t.Fatalf("slow: %d %q", res.StatusCode, body)
		}
	}
	tg.do(t, http.MethodGet, "/fast/", nil, nil)
	// Recorded once the handler returns, which may be just after the
	// client has read the body.
	waitFor(t, "3 slow and 1 fast request in the histograms", func() bool {
		return statsOf(tg.gw, "slow").Duration.Count == 3 && statsOf(tg.gw, "fast").Duration.Count == 1
	})
	s := statsOf(tg.gw, "slow")
	if min := 3 * bodyDelay.Seconds(); s.Duration.Sum < min {
		t.Errorf("3 slow requests took %.3fs in all, want at least %.3fs (the body included)", s.Duration.Sum, min)
	}
	if s.Latency.Count != 3 || s.Latency.Sum >= 3*bodyDelay.Seconds() {
		t.Errorf("upstream latency: %d samples, %.3fs in all; want 3, under the body's delay", s.Latency.Count, s.Latency.Sum)
	}
	// No 60ms request lands in a bucket under 50ms.
	for i, b := range s.Duration.Bounds {
		if b <= 0.05 && s.Duration.Cumulative[i] != 0 {
			t.Errorf("%d requests in bucket le=%g, want none: %v", s.Duration.Cumulative[i], b, s.Duration.Cumulative)
		}
	}
}
