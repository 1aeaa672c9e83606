package gateway_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/internal/testnet"
)

// hungAddr returns the address of a listener that accepts connections and
// reads requests but never answers: a paused process or a black-holed host
// whose kernel still completes the handshake.
func hungAddr(t testing.TB) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr)
}

// A node that fails hides behind hedging: an idempotent request whose
// instance is hung is answered by another one well before the client gives
// up, however fresh the gateway and wherever the hedge lands. The first
// attempt always goes to a hung instance: the others are on suspect nodes,
// used only once the alive ones are tried.
func TestHedgingHidesHungInstances(t *testing.T) {
	tests := []struct {
		name  string
		cfg   func(*gateway.Config)
		hung  int // hung instances besides the first, on suspect nodes
		warm  int // requests sent first to the good instance alone
		tries int
	}{
		// A gateway that just started has no p95 yet: it must hedge
		// anyway, after a default delay.
		{name: "auto, no p95 yet", cfg: func(c *gateway.Config) { c.HedgeAuto = true }, tries: 3},
		// With hedging off, an instance picked to refresh its stale
		// estimate (here: never asked) may be hung: that pick alone is
		// hedged.
		{name: "off, refresh pick", cfg: func(c *gateway.Config) {}, tries: 3},
		// The hedge may land on another hung instance: a further attempt
		// goes to a third one.
		{name: "fixed delay, two hung of three", cfg: func(c *gateway.Config) { c.HedgeAfter = 30 * time.Millisecond }, hung: 1, tries: 6},
		{name: "auto, two hung of three", cfg: func(c *gateway.Config) { c.HedgeAuto = true }, hung: 1, warm: 30, tries: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := startBackend(t, "good")
			cat, live := newCatalog(), newLiveness()
			insts := []api.Instance{instanceAt(hungAddr(t), "svc", "hung0", "node-hung0", "")}
			live.set("node-hung0", api.StatusAlive)
			for i := range tt.hung {
				node := "node-hung" + string(rune('1'+i))
				insts = append(insts, instanceAt(hungAddr(t), "svc", "hung"+string(rune('1'+i)), node, ""))
				live.set(node, api.StatusSuspect)
			}
			insts = append(insts, good.instance("svc", "node-good", ""))
			live.set("node-good", api.StatusSuspect)
			cfg := gateway.DefaultConfig()
			tt.cfg(&cfg)
			tg := startGateway(t, cfg, cat, live)
			if tt.warm > 0 {
				cat.set("svc", good.instance("svc", "node-good", ""))
				for range tt.warm {
					tg.do(t, http.MethodGet, "/svc/", nil, nil)
				}
			}
			cat.set("svc", insts...)
			client := &http.Client{Timeout: 3 * time.Second}
			for i := range tt.tries {
				start := time.Now()
				res, err := client.Get(tg.url + "/svc/")
				if err != nil {
					t.Fatalf("request %d: %v after %s", i, err, time.Since(start).Round(time.Millisecond))
				}
				res.Body.Close()
				if res.StatusCode != http.StatusOK || res.Header.Get("X-Herd-Upstream") != "node-good" {
					t.Fatalf("request %d: %d from %q", i, res.StatusCode, res.Header.Get("X-Herd-Upstream"))
				}
				if d := time.Since(start); d > 1500*time.Millisecond {
					t.Fatalf("request %d took %s", i, d)
				}
			}
		})
	}
}

// Retries after a failure that reached no upstream are never refused by
// the retry budget, and every failed exchange is counted once.
func TestRetriesOnNodeCrash(t *testing.T) {
	tests := []struct {
		name       string
		dead       int // instances whose port is closed
		concurrent int
		method     string
	}{
		// A kill -9 under load: many requests fail to connect at once.
		{name: "burst of refused GETs", dead: 2, concurrent: 40, method: http.MethodGet},
		{name: "burst of refused POSTs", dead: 2, concurrent: 40, method: http.MethodPost},
		{name: "one at a time", dead: 1, concurrent: 1, method: http.MethodGet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := startBackend(t, "good")
			cat, live := newCatalog(), newLiveness()
			var insts []api.Instance
			for i := range tt.dead {
				insts = append(insts, instanceAt(testnet.Refusing(t), "svc", "dead"+string(rune('0'+i)), "node-dead"+string(rune('0'+i)), ""))
			}
			cat.set("svc", append(insts, good.instance("svc", "node-good", ""))...)
			tg := startGateway(t, gateway.DefaultConfig(), cat, live)
			const rounds = 3
			for round := range rounds {
				var wg sync.WaitGroup
				errs := make(chan error, tt.concurrent)
				start := make(chan struct{})
				for range tt.concurrent {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						req, err := http.NewRequest(tt.method, tg.url+"/svc/", strings.NewReader("x"))
						if err != nil {
							errs <- err
							return
						}
						res, err := tg.client.Do(req)
						if err != nil {
							errs <- err
							return
						}
						body, _ := io.ReadAll(res.Body)
						res.Body.Close()
						if res.StatusCode != http.StatusOK {
							errs <- errors.New(res.Status + ": " + string(body))
						}
					}()
				}
				close(start)
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Errorf("round %d: %v", round, err)
				}
			}
			for _, s := range tg.gw.Stats() {
				// Every request succeeded in the end, so each failed
				// exchange was followed by exactly one retry, except a
				// failed hedge: a refresh pick (an instance not asked for a
				// while, as every instance is at first) is always hedged,
				// and on a loaded machine the hedge can go out to the
				// other dead instance before the refused first attempt is
				// retried.
				if s.Service == "svc" && (s.UpstreamErrors < s.Retries || s.UpstreamErrors > s.Retries+s.Hedges) {
					t.Errorf("%d upstream errors counted for %d retries and %d hedges", s.UpstreamErrors, s.Retries, s.Hedges)
				}
			}
		})
	}
}

// A hung instance keeps losing hedges; passive outlier detection ejects it,
// so that requests stop paying the hedge delay for it. Instances that are
// merely slower than the rest are not ejected.
func TestHedgeLosersEjected(t *testing.T) {
	tests := []struct {
		name      string
		slow      time.Duration // the second instance's delay before answering; 0: hung
		wantEject bool
	}{
		{name: "hung", wantEject: true},
		{name: "slower but healthy", slow: 15 * time.Millisecond, wantEject: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := startBackend(t, "good")
			var addr *net.TCPAddr
			if tt.slow == 0 {
				addr = hungAddr(t)
			} else {
				slow := startSlowBackend(t, tt.slow)
				addr = slow
			}
			cat, live := newCatalog(), newLiveness()
			cat.set("svc", instanceAt(addr, "svc", "other", "node-other", ""), good.instance("svc", "node-good", ""))
			cfg := gateway.DefaultConfig()
			cfg.HedgeAfter = 5 * time.Millisecond
			tg := startGateway(t, cfg, cat, live)
			// Requests spread: the slow or hung one gets its share by the
			// stale-estimate refresh and by p2c.
			ejected := func() bool {
				for _, s := range tg.gw.Stats() {
					if s.Service == "svc" && s.Ejections > 0 {
						return true
					}
				}
				return false
			}
			// Ejection waits for a hedge loser to stay silent long after
			// its rival answered: on a loaded machine (the end-to-end suite
			// beside this package) that takes longer than 3s.
			within := 3 * time.Second
			if tt.wantEject {
				within = 20 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), within)
			defer cancel()
			for ctx.Err() == nil && !ejected() {
				// Concurrent requests make p2c send some to the other
				// instance.
				var wg sync.WaitGroup
				for range 4 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.url+"/svc/", nil)
						if res, err := tg.client.Do(req); err == nil {
							_, _ = io.Copy(io.Discard, res.Body)
							res.Body.Close()
						}
					}()
				}
				wg.Wait()
			}
			if got := ejected(); got != tt.wantEject {
				t.Fatalf("ejected %v, want %v", got, tt.wantEject)
			}
		})
	}
}

// startSlowBackend starts a server that answers 200 after d.
func startSlowBackend(t testing.TB, d time.Duration) *net.TCPAddr {
	t.Helper()
	b := startBackend(t, "slow-inner")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		b.srv.Config.Handler.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr)
}
