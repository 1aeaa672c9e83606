package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func testConfig(t testing.TB) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = "solo"
	cfg.DataDir = t.TempDir()
	cfg.GossipPort, cfg.ClientPort, cfg.PeerPort = freePort(t), freePort(t), freePort(t)
	cfg.GatewayPort, cfg.APIPort, cfg.ServicePort = freePort(t), freePort(t), freePort(t)
	cfg.DrainDelay = 0
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return cfg
}

// caClient trusts the CA in dataDir and sends the management token kept
// there (once the node has written it), as the CLI does with HERD_TOKEN.
func caClient(t testing.TB, dataDir string) *http.Client {
	t.Helper()
	return tokenClient(t, dataDir, filepath.Join(dataDir, "acl-token"))
}

// tokenClient trusts the CA in dataDir and sends the token in tokenFile.
func tokenClient(t testing.TB, dataDir, tokenFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dataDir, "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	base := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 32}
	return &http.Client{Transport: tokenTransport{base: base, file: tokenFile}}
}

// tokenTransport adds the token in file to requests that carry none.
type tokenTransport struct {
	base *http.Transport
	file string
}

func (tt tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if b, err := os.ReadFile(tt.file); err == nil && r.Header.Get("Authorization") == "" && r.Header.Get("X-Herd-Token") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	return tt.base.RoundTrip(r)
}

func (tt tokenTransport) CloseIdleConnections() { tt.base.CloseIdleConnections() }

func get(url string) (int, string, error) { return getWith(http.DefaultClient, url) }

func getWith(hc *http.Client, url string) (int, string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// A node starts, becomes ready, serves through its own gateway, and on
// Close stops every goroutine it started.
func TestStartServeCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := testConfig(t)
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	api := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	gw := fmt.Sprintf("http://127.0.0.1:%d", cfg.GatewayPort)
	hc := caClient(t, cfg.DataDir)
	waitFor(t, 20*time.Second, "ready and routing", func() error {
		if code, body, err := getWith(hc, api+"/readyz"); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %s %v", code, body, err)
		}
		if code, body, err := get(gw + "/hello/"); err != nil || code != 200 {
			return fmt.Errorf("hello %d %s %v", code, body, err)
		}
		return nil
	})
	// Metrics: etcd's own, and the node's from the gateway, gossip and the
	// catalog. A request is in the duration histogram once the gateway's
	// handler returns, which may be just after the client read the answer.
	waitFor(t, 10*time.Second, "metrics", func() error {
		code, metrics, err := getWith(hc, api+"/metrics")
		if err != nil || code != 200 {
			return fmt.Errorf("GET /metrics: %d %v", code, err)
		}
		var missing []string
		for _, want := range []string{
			`herd_gateway_requests_total{code="2xx",method="read",service="hello"}`,
			`herd_gateway_request_duration_seconds_count{service="hello"}`,
			`herd_gateway_request_duration_seconds_bucket{service="hello",le="+Inf"}`,
			`herd_gateway_upstream_latency_seconds_count{service="hello"}`,
			`herd_gossip_members{status="alive"} 1`,
			`herd_catalog_instances{service="echo"} 1`,
			`herd_registry_role{role="voter"} 1`,
			`herd_catalog_synced 1`,
			`herd_catalog_relists_total 0`,
			`herd_gateway_rejected_total{reason="overloaded"} 0`,
			`etcd_server_has_leader 1`,
			`herd_tls_cert_expiry_timestamp_seconds`,
			`herd_gossip_undecryptable_total 0`,
			`herd_acl_tokens 1`,
			`herd_acl_synced 1`,
			`herd_acl_denied_total{reason="token_required"} 0`,
			`herd_check_runs_total`,
			`herd_checks{status="passing"}`,
			`herd_check_status_writes_total{result="failed"} 0`,
			`herd_maintenance{scope="node"} 0`,
		} {
			if !strings.Contains(metrics, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("/metrics lacks %v", missing)
		}
		return nil
	})

	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	http.DefaultClient.CloseIdleConnections()
	hc.CloseIdleConnections()
	waitFor(t, 10*time.Second, "goroutines back to where they were", func() error {
		if now := runtime.NumGoroutine(); now > before {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			return fmt.Errorf("%d goroutines, %d before:\n%s", now, before, buf.String())
		}
		return nil
	})
}

// A failed start (a port in use) undoes itself: the data dir lock is
// released and the listeners it bound are closed.
func TestFailedStartCleansUp(t *testing.T) {
	cfg := testConfig(t)
	busy, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.ServicePort))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err == nil {
		t.Fatal("start with the service port in use succeeded")
	}
	busy.Close()
	n2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n2.Start(ctx); err != nil {
		t.Fatalf("start after a failed start on the same dir and ports: %v", err)
	}
	if err := n2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// startNode starts a node of cfg, closed when the test ends.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close(context.Background()) })
	return n
}

// waitReady waits until the node at base answers /readyz with 200.
func waitReady(t testing.TB, hc *http.Client, base string) {
	t.Helper()
	waitFor(t, 30*time.Second, base+" ready", func() error {
		if c, b, err := getWith(hc, base+"/readyz"); err != nil || c != 200 {
			return fmt.Errorf("%d %s %v", c, b, err)
		}
		return nil
	})
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		case <-tick.C:
		}
	}
}
