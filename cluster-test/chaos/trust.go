package chaos

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The chaos cluster runs with security on, as users get it: the harness
// trusts only the cluster's CA for the agent API, and reads the registry
// with etcd's own client and a client certificate from `herd tls cert
// create`.

// trustedDir is the data-dir root of the cluster the harness talks to now
// (runs are one at a time); the API clients trust every CA found under it.
var trustedDir atomic.Pointer[string]

func trustCluster(dir string) {
	trustedDir.Store(&dir)
	// A new cluster: its own tokens.
	operatorToken.Store(nil)
	workloadToken.Store(nil)
}

// caPool holds the CAs of the current cluster's data dirs.
func caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	if d := trustedDir.Load(); d != nil {
		files, _ := filepath.Glob(filepath.Join(*d, "*", "tls", "ca.pem"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				pool.AppendCertsFromPEM(b)
			}
		}
	}
	return pool
}

// The harness's API tokens: the management token (the first founder
// writes it to its data dir; kept once read, since a fault may wipe that
// dir) for its control requests, and the workload's own token, scoped to
// the services it registers (service:chaos-), made once the cluster forms.
var (
	operatorToken atomic.Pointer[string]
	workloadToken atomic.Pointer[string]
)

// managementToken is the cluster's management token, "" until a node has
// written it.
func managementToken() string {
	if t := operatorToken.Load(); t != nil {
		return *t
	}
	d := trustedDir.Load()
	if d == nil {
		return ""
	}
	files, _ := filepath.Glob(filepath.Join(*d, "*", "acl-token"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && len(bytes.TrimSpace(b)) > 0 {
			t := string(bytes.TrimSpace(b))
			operatorToken.Store(&t)
			return t
		}
	}
	return ""
}

func workload() string {
	if t := workloadToken.Load(); t != nil {
		return *t
	}
	return ""
}

// tokenTransport sends token() with every request that has none.
type tokenTransport struct {
	base  *http.Transport
	token func() string
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if tok := t.token(); tok != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return t.base.RoundTrip(r)
}

// apiTransport dials the agent API over TLS, verifying the node against
// the cluster CA, and sends token().
func apiTransport(token func() string) http.RoundTripper {
	return tokenTransport{base: tlsTransport(), token: token}
}

func tlsTransport() *http.Transport {
	return &http.Transport{
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			var d net.Dialer
			raw, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: caPool()})
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
	}
}

// newToken is a join token for a new cluster (`herd token generate`).
func newToken(bin string) (string, error) {
	out, err := exec.Command(bin, "token", "generate").Output()
	if err != nil {
		return "", fmt.Errorf("herd token generate: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// registryAccess holds the harness's client certificate for the registry.
type registryAccess struct {
	mu  sync.Mutex
	cfg *tls.Config
}

// tlsConfig makes the client certificate on first use, from the data dir
// of a node that holds the CA key.
func (r *registryAccess) tlsConfig(c *Cluster) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg != nil {
		return r.cfg, nil
	}
	keys, _ := filepath.Glob(filepath.Join(c.Dir, "*", "tls", "ca-key.pem"))
	if len(keys) == 0 {
		return nil, fmt.Errorf("no node data dir under %s holds the CA key yet", c.Dir)
	}
	out := filepath.Join(c.Dir, "chaos-client")
	dataDir := filepath.Dir(filepath.Dir(keys[0]))
	if b, err := exec.Command(c.Bin, "tls", "cert", "create", "--client", "--name", "chaos", "--data-dir", dataDir, "--out", out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("herd tls cert create: %v: %s", err, b)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(out, "chaos.pem"), filepath.Join(out, "chaos-key.pem"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(out, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	r.cfg = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
	return r.cfg, nil
}

// registryClient is an etcd client of the registry at endpoints.
func (c *Cluster) registryClient(endpoints []string) (*clientv3.Client, error) {
	tc, err := c.access.tlsConfig(c)
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, TLS: tc})
}
