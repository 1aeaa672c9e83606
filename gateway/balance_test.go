package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
)

// p2c sends most requests to the faster of two instances.
func TestP2CPrefersTheFasterInstance(t *testing.T) {
	fast := startBackend(t, "fast")
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The latency being measured.
		<-time.After(20 * time.Millisecond)
		w.Header().Set("X-Backend", "slow")
	}))
	t.Cleanup(slow.Close)
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", fast.instance("svc", "node-fast", ""), instanceAt(backendAddr(slow), "svc", "slow", "node-slow", ""))
	cfg := gateway.DefaultConfig()
	cfg.Balancer = gateway.BalancerP2C
	tg := startGateway(t, cfg, cat, live)
	toFast := 0
	for range 100 {
		res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil)
		if res.Header.Get("X-Herd-Upstream") == "node-fast" {
			toFast++
		}
	}
	if toFast < 75 {
		t.Fatalf("p2c sent %d of 100 requests to the fast instance, want most", toFast)
	}
}

// Round-robin honours weights exactly; every policy reaches every instance.
func TestWeightsAndPolicies(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	ia, ib := a.instance("svc", "node-a", ""), b.instance("svc", "node-b", "")
	ia.Weight = 3
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", ia, ib)
	for _, policy := range []string{gateway.BalancerRoundRobin, gateway.BalancerP2C, gateway.BalancerLeastRequest, gateway.BalancerRandom} {
		t.Run(policy, func(t *testing.T) {
			cfg := gateway.DefaultConfig()
			cfg.Balancer = policy
			tg := startGateway(t, cfg, cat, live)
			counts := map[string]int{}
			for range 80 {
				res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil)
				counts[res.Header.Get("X-Herd-Upstream")]++
			}
			if counts["node-a"] == 0 || counts["node-b"] == 0 {
				t.Fatalf("%s reached %v", policy, counts)
			}
			if policy == gateway.BalancerRoundRobin && (counts["node-a"] != 60 || counts["node-b"] != 20) {
				t.Fatalf("weighted round-robin: %v, want 60/20", counts)
			}
		})
	}
	bad := gateway.DefaultConfig()
	bad.Balancer = "fastest"
	if err := bad.Validate(); err == nil {
		t.Fatal("unknown balancer accepted")
	}
}

// A hung instance does not stall idempotent requests when hedging is on:
// after the hedge delay a second instance is asked and its answer wins.
func TestHedgingAroundAHungInstance(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a paused process: no answer until the test ends
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hung.Close() })
	fast := startBackend(t, "fast")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", instanceAt(backendAddr(hung), "svc", "a-hung", "node-hung", ""), fast.instance("svc", "node-fast", ""))
	cfg := gateway.DefaultConfig()
	cfg.HedgeAfter = 50 * time.Millisecond
	tg := startGateway(t, cfg, cat, live)
	for i := range 6 {
		start := time.Now()
		res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil)
		if res.StatusCode != http.StatusOK || res.Header.Get("X-Herd-Upstream") != "node-fast" {
			t.Fatalf("request %d: %d from %q: %s", i, res.StatusCode, res.Header.Get("X-Herd-Upstream"), body)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("request %d took %s despite hedging", i, d)
		}
	}
}

// The hash policy keeps a key on one instance, and only the keys of an
// instance that goes away move.
func TestHashAffinity(t *testing.T) {
	var insts []api.Instance
	for _, name := range []string{"a", "b", "c"} {
		in := startBackend(t, name).instance("svc", "node-"+name, "")
		in.Meta = map[string]string{gateway.MetaBalancer: gateway.BalancerHash, gateway.MetaHashOn: "header:X-User"}
		insts = append(insts, in)
	}
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", insts...)
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	owner := map[string]string{}
	users := []string{"ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal", "ivy", "jon"}
	for _, u := range users {
		for range 3 {
			res, _ := tg.do(t, http.MethodGet, "/svc/", http.Header{"X-User": {u}}, nil)
			up := res.Header.Get("X-Herd-Upstream")
			if owner[u] != "" && owner[u] != up {
				t.Fatalf("user %s went to %s then %s", u, owner[u], up)
			}
			owner[u] = up
		}
	}
	spread := map[string]bool{}
	for _, o := range owner {
		spread[o] = true
	}
	if len(spread) < 2 {
		t.Fatalf("10 users all hashed to %v", spread)
	}
	live.set("node-a", api.StatusDead)
	for _, u := range users {
		res, _ := tg.do(t, http.MethodGet, "/svc/", http.Header{"X-User": {u}}, nil)
		up := res.Header.Get("X-Herd-Upstream")
		if owner[u] != "node-a" && up != owner[u] {
			t.Fatalf("user %s moved from %s to %s though its instance stayed", u, owner[u], up)
		}
	}
}

// --prefer-local sends traffic to this node's instance while it is healthy.
func TestPreferLocal(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", a.instance("svc", "node-a", ""), b.instance("svc", "node-b", ""))
	cfg := gateway.DefaultConfig()
	cfg.LocalNode, cfg.PreferLocal = "node-b", true
	tg := startGateway(t, cfg, cat, live)
	for range 10 {
		if res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.Header.Get("X-Herd-Upstream") != "node-b" {
			t.Fatalf("answered by %s, want the local node-b", res.Header.Get("X-Herd-Upstream"))
		}
	}
	live.set("node-b", api.StatusSuspect)
	if res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil); res.Header.Get("X-Herd-Upstream") != "node-a" {
		t.Fatalf("local node suspect: answered by %s, want node-a", res.Header.Get("X-Herd-Upstream"))
	}
}

// Health decides first: passing instances get every request; warning ones
// only when no passing one is left; critical ones and those in maintenance
// never, and with nothing else left the answer is a 503 that says why.
func TestRoutesByHealth(t *testing.T) {
	pass, warn, crit, maint := startBackend(t, "pass"), startBackend(t, "warn"), startBackend(t, "crit"), startBackend(t, "maint")
	ip, iw, ic, im := pass.instance("svc", "node-pass", ""), warn.instance("svc", "node-warn", ""), crit.instance("svc", "node-crit", ""), maint.instance("svc", "node-maint", "")
	iw.Health, ic.Health, im.Maintenance = api.HealthWarning, api.HealthCritical, "reboot"
	cat, live := newCatalog(), newLiveness()
	tg := startGateway(t, gateway.DefaultConfig(), cat, live)
	count := func() map[string]int {
		counts := map[string]int{}
		for range 40 {
			res, _ := tg.do(t, http.MethodGet, "/svc/", nil, nil)
			counts[res.Header.Get("X-Herd-Upstream")+"/"+http.StatusText(res.StatusCode)]++
		}
		return counts
	}
	cat.set("svc", ip, iw, ic, im)
	if got := count(); got["node-pass/OK"] != 40 {
		t.Fatalf("with a passing instance: %v", got)
	}
	ip.Health = api.HealthCritical
	cat.set("svc", ip, iw, ic, im)
	if got := count(); got["node-warn/OK"] != 40 {
		t.Fatalf("with only a warning instance routable: %v", got)
	}
	iw.Health = api.HealthCritical
	cat.set("svc", ip, iw, ic, im)
	res, body := tg.do(t, http.MethodGet, "/svc/", nil, nil)
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "(3 critical, 1 in maintenance)") {
		t.Fatalf("nothing routable: %d %s", res.StatusCode, body)
	}
	// A suspect node's passing instance comes after an alive node's
	// warning one.
	iw.Health, ip.Health = api.HealthWarning, api.HealthPassing
	live.set("node-pass", api.StatusSuspect)
	cat.set("svc", ip, iw, ic, im)
	if got := count(); got["node-warn/OK"] != 40 {
		t.Fatalf("warning on an alive node vs passing on a suspect one: %v", got)
	}
}
