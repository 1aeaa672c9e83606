package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/acl"
	"github.com/herdcluster/herd/api"
)

// The cost of access control on the agent API, measured on a real node
// (embedded etcd, HTTPS on a real socket) with ACLs on (a service:bench
// token, looked up and checked on every request) and off (the check
// bypassed), one after the other in the same run: registrations (PUT,
// through the registry) and reads (GET of a service from the catalog),
// from 16 concurrent clients, in alternating rounds (benchRounds). `make
// bench-acl` runs them and prints the medians and ratios.

// benchAPI starts a node for b and returns its API URL and a client that
// sends a service:bench token.
func benchAPI(b *testing.B) (*Node, string, *http.Client) {
	cfg := testConfig(b)
	cfg.Logger = nil
	n := startNode(b, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	mgmt := caClient(b, cfg.DataDir)
	var tok api.ACLToken
	waitFor(b, 30*time.Second, "a service:bench token", func() error {
		resp, err := mgmt.Post(base+"/v1/acl/tokens", "application/json", strings.NewReader(`{"name":"bench","policies":["service:bench"]}`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return json.Unmarshal(body, &tok)
	})
	file := filepath.Join(b.TempDir(), "token")
	if err := os.WriteFile(file, []byte(tok.Secret), 0o600); err != nil {
		b.Fatal(err)
	}
	hc := tokenClient(b, cfg.DataDir, file)
	waitFor(b, 30*time.Second, "the token known and hello in the catalog", func() error {
		return readService(hc, base, 0)
	})
	return n, base, hc
}

func benchACL(b *testing.B, n *Node, base string, hc *http.Client, on bool, do func(*http.Client, string, int64) error) {
	n.acls.bypass.Store(!on)
	defer n.acls.bypass.Store(false)
	var seq atomic.Int64
	b.SetParallelism(8) // 16 clients on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := do(hc, base, seq.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

func register(hc *http.Client, base string, i int64) error {
	// 64 IDs, written over and over: the node holds the same number of
	// instances throughout, so rounds compare.
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/services/bench/instances/b%d", base, i%64), strings.NewReader(`{"address":"127.0.0.1","port":9}`))
	req.Header.Set("Content-Type", "application/json")
	return expect200(hc.Do(req))
}

func readService(hc *http.Client, base string, _ int64) error {
	return expect200(hc.Get(base + "/v1/services/hello"))
}

func expect200(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode)
	}
	return nil
}

// benchRounds runs HERD_BENCH_ROUNDS (1) rounds of on and off, in the
// order on, off, off, on, on, off...: what drifts during the run (the
// registry's size, the disk) weighs on both alike.
func benchRounds(b *testing.B, do func(*http.Client, string, int64) error) {
	n, base, hc := benchAPI(b)
	rounds := 1
	if v, err := strconv.Atoi(os.Getenv("HERD_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for r := range rounds {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, on := range order {
			name := "acl=off"
			if on {
				name = "acl=on"
			}
			b.Run(name, func(b *testing.B) { benchACL(b, n, base, hc, on, do) })
		}
	}
}

func BenchmarkAPIRegister(b *testing.B) { benchRounds(b, register) }

func BenchmarkAPIRead(b *testing.B) { benchRounds(b, readService) }

// The check alone, per request, against none (the routing and the context
// it carries the caller in are in both): a token looked up among 1,000
// (hash, map, expiry, policy).
func BenchmarkAuthenticate(b *testing.B) {
	n := &Node{}
	var list []*acl.Token
	var secret string
	for i := range 1000 {
		s, err := acl.NewSecret()
		if err != nil {
			b.Fatal(err)
		}
		list = append(list, &acl.Token{Name: fmt.Sprintf("t%d", i), Policies: []string{"service:bench"}, Hash: acl.Hash(s)})
		secret = s
	}
	n.acls.set.Store(acl.NewSet(list, 1))
	s := &apiServer{n: n}
	h := s.guard(needServiceOf, func(w http.ResponseWriter, r *http.Request) {})
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/services/{name}/instances/{id}", h)
	req := httptest.NewRequest(http.MethodPut, "/v1/services/bench/instances/b1", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	for _, on := range []bool{true, false} {
		b.Run(fmt.Sprintf("acl=%v", map[bool]string{true: "on", false: "off"}[on]), func(b *testing.B) {
			n.acls.bypass.Store(!on)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				mux.ServeHTTP(w, req)
			}
			if w.Code != 200 {
				b.Fatalf("%d %s", w.Code, w.Body)
			}
		})
	}
}
