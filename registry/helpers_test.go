package registry

import (
	"context"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/herdcluster/herd/secure"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testLogger writes to the test log when -v is given, else nowhere.
func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// freePort asks the OS for a free TCP port on ip.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testMemberConfig returns a member config with OS-chosen ports and a
// temporary data dir.
func testMemberConfig(t testing.TB, name string) MemberConfig {
	t.Helper()
	cfg := DefaultMemberConfig(name, t.TempDir())
	cfg.WatchProgressInterval = 500 * time.Millisecond
	cfg.ClientPort = freePort(t, cfg.BindIP)
	cfg.PeerPort = freePort(t, cfg.BindIP)
	cfg.Logger = testLogger(t)
	cfg.TLS = testTLS(t, name)
	return cfg
}

// testCA is the CA of every member and client of this package's tests:
// they run with mutual TLS, as herd does.
var testCA = sync.OnceValues(func() (*secure.CA, error) { return secure.NewCA("registry-test") })

// testTLS issues a certificate for name on 127.0.0.1 and returns the
// member TLS settings that use it.
func testTLS(t testing.TB, name string) *TLS {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	files := secure.Files{Dir: t.TempDir()}
	key, err := secure.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(key.Public(), secure.CertRequest{Name: name, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := secure.KeyPEM(key)
	if err := files.SaveCA(ca, false); err != nil {
		t.Fatal(err)
	}
	if err := files.SaveNodeCert(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), kp); err != nil {
		t.Fatal(err)
	}
	store, err := secure.OpenStore(files)
	if err != nil {
		t.Fatal(err)
	}
	return &TLS{CertFile: files.CertFile(), KeyFile: files.KeyFile(), CAFile: files.CAFile(), Client: store.ClientConfig()}
}

// startSingle bootstraps a one-member registry and returns it with a client.
func startSingle(t testing.TB) (*Member, *clientv3.Client) {
	t.Helper()
	cfg := testMemberConfig(t, "solo")
	m, err := Bootstrap(context.Background(), cfg)
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	t.Cleanup(m.Close)
	cli := newTestClient(t, m.ClientURL())
	return m, cli
}

func newTestClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := NewClient(endpoints, testTLS(t, "client").Client, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// tcpProxy forwards connections to target until cut; cut closes every
// connection and refuses new ones until restore. It lets a test break a
// client's connection to a real member.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]struct{}{}
	}
}

// compactAll compacts the registry up to its current revision, physically,
// and returns that revision.
func compactAll(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx := context.Background()
	resp, err := cli.Get(ctx, "anything")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}
