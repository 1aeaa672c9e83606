package gossip

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func freeGossipPort(t *testing.T) int {
	t.Helper()
	// memberlist binds TCP and UDP on the same port: find one free for both.
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
	t.Fatal("no free port for TCP and UDP")
	return 0
}

func startNode(t *testing.T, name string) *Gossip {
	t.Helper()
	cfg := DefaultConfig(name)
	cfg.BindPort = freeGossipPort(t)
	cfg.ProbeInterval = 200 * time.Millisecond
	cfg.SuspectMargin = 300 * time.Millisecond
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", name)
	}
	g, err := New(cfg, Meta{ID: name + "-id", GatewayPort: 8080})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

func waitStatus(t *testing.T, g *Gossip, node, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for g.NodeStatus(node) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s sees %s as %q, want %q after %s", g.cfg.Name, node, g.NodeStatus(node), want, timeout)
		}
		select {
		case <-g.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestJoinStatusesAndLeave(t *testing.T) {
	a, b, c := startNode(t, "a"), startNode(t, "b"), startNode(t, "c")
	ctx := context.Background()
	if _, err := b.Join(ctx, []string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(ctx, []string{"nowhere.invalid:1", a.LocalAddr()}); err != nil {
		t.Fatalf("join with one bad address among good ones: %v", err)
	}
	for _, g := range []*Gossip{a, b, c} {
		for _, n := range []string{"a", "b", "c"} {
			waitStatus(t, g, n, StatusAlive, 5*time.Second)
		}
	}
	nodes := a.Nodes()
	if len(nodes) != 3 || nodes[1].Meta.ID != "b-id" || nodes[1].Meta.GatewayPort != 8080 {
		t.Fatalf("nodes = %+v", nodes)
	}

	m := b.LocalMeta()
	m.Role = "voter"
	if err := b.SetMeta(m); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Nodes()[1].Meta.Role != "voter" {
		if time.Now().After(deadline) {
			t.Fatal("metadata update not seen")
		}
		<-a.Changed()
	}

	// c leaves gracefully: left, not dead.
	if err := c.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	waitStatus(t, a, "c", StatusLeft, 10*time.Second)

	// b stops without a word: suspect first, then dead.
	_ = b.Close()
	waitStatus(t, a, "b", StatusSuspect, 10*time.Second)
	waitStatus(t, a, "b", StatusDead, 20*time.Second)
}

func TestJoinErrorsNameEachAddress(t *testing.T) {
	g := startNode(t, "a")
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	_, err := g.Join(context.Background(), []string{closed, strings.TrimPrefix(web.URL, "http://"), "127.0.0.1:99999"})
	if err == nil {
		t.Fatal("join succeeded")
	}
	for _, want := range []string{closed + ": nothing answers", "is not a herd gossip endpoint", `port "99999" is not in 1-65535`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestNameConflict(t *testing.T) {
	a := startNode(t, "a")
	dup := startNode(t, "a")
	_, _ = dup.Join(context.Background(), []string{a.LocalAddr()})
	deadline := time.Now().Add(5 * time.Second)
	for len(dup.NameConflict()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second node with the same name saw no conflict")
		}
		<-time.After(20 * time.Millisecond)
	}
}

func TestNormalizeAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1":      "10.0.0.1:7946",
		"10.0.0.1:1234": "10.0.0.1:1234",
		"node-1":        "node-1:7946",
		"[::1]:7000":    "[::1]:7000",
		"::1":           "[::1]:7946",
		" 127.0.0.1 ":   "127.0.0.1:7946",
	} {
		got, err := normalizeAddr(in)
		if err != nil || got != want {
			t.Errorf("normalizeAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "host:0", "host:x", ":7946"} {
		if _, err := normalizeAddr(bad); err == nil {
			t.Errorf("normalizeAddr(%q) succeeded", bad)
		}
	}
}

// Close returns while packets keep arriving: the transport must drain what
// its listeners receive until they have stopped.
func TestCloseUnderPacketFlood(t *testing.T) {
	for range 50 {
		g := startNode(t, "flooded")
		conn, err := net.Dial("udp", g.LocalAddr())
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			junk := []byte("not a memberlist packet")
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = conn.Write(junk)
				}
			}
		}()
		// Close only once packets are flowing through the transport.
		from := conn.LocalAddr().String()
		deadline := time.Now().Add(5 * time.Second)
		for {
			g.mu.Lock()
			_, flowing := g.heard[from]
			g.mu.Unlock()
			if flowing {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no packet reached the transport")
			}
			<-time.After(time.Millisecond)
		}
		closed := make(chan error, 1)
		go func() { closed <- g.Close() }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close hung while packets were arriving")
		}
		close(stop)
		<-done
		conn.Close()
	}
}

// Two sides that each saw the other die (a partition, or a node that came
// back without --join) merge again: the reconnect loop dials dead nodes.
func TestReconnectToDeadNode(t *testing.T) {
	a, b := startNode(t, "a"), startNode(t, "b")
	if _, err := b.Join(context.Background(), []string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, a, "b", StatusAlive, 5*time.Second)
	_ = b.Close()
	waitStatus(t, a, "b", StatusDead, 20*time.Second)

	// b comes back on the same address knowing nobody: only a's reconnect
	// loop can bring the two together.
	cfg := b.cfg
	b2, err := New(cfg, Meta{ID: "b-id", GatewayPort: 8080})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b2.Close() })
	waitStatus(t, a, "b", StatusAlive, 15*time.Second)
	waitStatus(t, b2, "a", StatusAlive, 15*time.Second)
}
