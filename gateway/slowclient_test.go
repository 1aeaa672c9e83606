package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// slowConfig is a gateway config with short client timeouts, so that the
// tests see them fire.
func slowConfig() gateway.Config {
	cfg := gateway.DefaultConfig()
	cfg.ReadHeaderTimeout = 300 * time.Millisecond
	cfg.IdleTimeout = time.Minute
	cfg.ClientBodyTimeout = 300 * time.Millisecond
	cfg.ClientWriteTimeout = 300 * time.Millisecond
	return cfg
}

// closedWithin reads c until it ends and reports how long that took.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection was still open after %s", limit)
	}
	return time.Since(start)
}

// A connection that sends nothing is closed after the read-header timeout
// (as net/http does), not kept for the idle timeout.
func TestSilentConnectionGetsTheHeaderTimeout(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	tg := startGateway(t, slowConfig(), cat, newLiveness())
	c, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The idle timeout is a minute: well under it.
	d := closedWithin(t, c, 20*time.Second)
	t.Logf("a silent connection was closed after %s (read-header timeout 300ms, idle timeout 1m)", d)
}

// A request body that stops arriving is a 408 after the body timeout; one
// that keeps arriving slowly, each part within it, is served.
func TestStalledBodyTimesOut(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	tg := startGateway(t, slowConfig(), cat, newLiveness())

	// Stalled: many of them, every one closed.
	var conns []net.Conn
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		header := "POST /svc/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\nfirst bytes"
		if i%2 == 1 {
			header = "POST /svc/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
		}
		if _, err := io.WriteString(c, header); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			res.Body.Close()
			if res.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("stalled body %d: %d, want 408", i, res.StatusCode)
			}
		}
		closedWithin(t, c, 20*time.Second)
	}
	if s := tg.gw.Stats(); len(s) > 0 && s[0].Ejections+s[0].UpstreamErrors != 0 {
		t.Fatalf("stalled client bodies counted against the instance: %+v", s[0])
	}

	// Slow but moving: a byte every 100 ms, 15 of them, each well within
	// the 300 ms body timeout, so the upload takes 1.5 s in all.
	c, br := dialGateway(t, tg.addr)
	body := strings.Repeat("s", 15)
	_, _ = io.WriteString(c, "POST /svc/x HTTP/1.1\r\nHost: gw\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := range len(body) {
		<-tick.C // the client's pace
		if _, err := io.WriteString(c, body[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || !strings.Contains(string(got), `"body_len":15`) {
		t.Fatalf("a slow but moving upload: %d %s", res.StatusCode, got)
	}
}

// A client that stops reading a large answer loses the connection after
// the write timeout, and the upstream exchange behind it ends; one that
// reads slowly but steadily gets the whole answer.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	tg := startGateway(t, slowConfig(), cat, newLiveness())

	// GET takes the front's express path, DELETE net/http and the general
	// path, POST the general path with a body.
	for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
		c, _ := dialGateway(t, tg.addr)
		// 64 MiB: far more than the socket buffers on both hops hold.
		fmt.Fprintf(c, "%s /svc/big HTTP/1.1\r\nHost: gw\r\n%s: %d\r\nContent-Length: 1\r\n\r\nx", method, hdrResponseBodyLen, 64<<20)
		// The client reads nothing; the gateway must give up on it.
		if c.(*net.TCPConn).SetReadBuffer(4096) != nil {
			t.Fatal("SetReadBuffer")
		}
		// Generous: under -race the backend alone takes seconds to make
		// the answer.
		waitForWithin(t, 60*time.Second, method+": the gateway dropping the client that stopped reading", func() bool {
			s := tg.gw.Stats()
			return len(s) > 0 && s[0].Inflight == 0
		})
		c.Close()
	}

	// Slow but moving: 1 MiB read 32 KiB at a time every 20 ms.
	c, br := dialGateway(t, tg.addr)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /svc/big HTTP/1.1\r\nHost: gw\r\n%s: %d\r\n\r\n", hdrResponseBodyLen, 1<<20)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	buf := make([]byte, 32<<10)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		<-tick.C // the client's pace
		m, err := res.Body.Read(buf)
		n += m
		if err != nil {
			break
		}
	}
	if n != 1<<20 {
		t.Fatalf("a slow but steady reader got %d of %d bytes", n, 1<<20)
	}
}

// Connections over the caps are answered 503 too_many_connections and
// closed; trusted proxies are exempt from the per-IP cap; a freed slot is
// used again.
func TestConnectionCaps(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	open := func(t *testing.T, tg *testGateway, n int) []net.Conn {
		var cs []net.Conn
		for i := 0; i < n; i++ {
			c, br := dialGateway(t, tg.addr)
			_, _ = io.WriteString(c, "GET /svc/ HTTP/1.1\r\nHost: gw\r\n\r\n")
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("connection %d of %d: %v %v", i+1, n, err, res)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			cs = append(cs, c)
		}
		return cs
	}
	refused := func(t *testing.T, tg *testGateway, what string) {
		c, br := dialGateway(t, tg.addr)
		_, _ = io.WriteString(c, "GET /svc/ HTTP/1.1\r\nHost: gw\r\n\r\n")
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), gateway.ReasonTooManyConns) {
			t.Fatalf("%s: %d %s, want 503 %s", what, res.StatusCode, body, gateway.ReasonTooManyConns)
		}
		closedWithin(t, c, 10*time.Second)
	}

	t.Run("per IP", func(t *testing.T) {
		cfg := gateway.DefaultConfig()
		cfg.MaxConnsPerIP = 5
		tg := startGateway(t, cfg, cat, newLiveness())
		cs := open(t, tg, 5)
		refused(t, tg, "a sixth connection from one IP")
		if got := tg.gw.Rejected()[gateway.ReasonTooManyConns]; got != 1 {
			t.Fatalf("Rejected()[too_many_connections] = %d", got)
		}
		cs[0].Close()
		waitFor(t, "a freed slot taken again", func() bool {
			c, br := dialGateway(t, tg.addr)
			defer c.Close()
			_, _ = io.WriteString(c, "GET /svc/ HTTP/1.1\r\nHost: gw\r\n\r\n")
			res, err := http.ReadResponse(br, nil)
			return err == nil && res.StatusCode == 200
		})
	})
	t.Run("trusted proxies exempt", func(t *testing.T) {
		cfg := gateway.DefaultConfig()
		cfg.MaxConnsPerIP = 2
		cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		tg := startGateway(t, cfg, cat, newLiveness())
		open(t, tg, 6)
	})
	t.Run("total", func(t *testing.T) {
		cfg := gateway.DefaultConfig()
		cfg.MaxConns = 3
		tg := startGateway(t, cfg, cat, newLiveness())
		open(t, tg, 3)
		refused(t, tg, "a fourth connection in all")
	})
}

// While hundreds of connections are silent, stall their bodies or stop
// reading, the gateway keeps serving everyone else.
func TestSlowClientsDoNotStarveOthers(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	cfg := gateway.DefaultConfig() // the real timeouts: the attackers stay for the whole test
	tg := startGateway(t, cfg, cat, newLiveness())
	var attackers []net.Conn
	defer func() {
		for _, c := range attackers {
			c.Close()
		}
	}()
	for i := 0; i < 300; i++ {
		c, err := net.Dial("tcp", tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		attackers = append(attackers, c)
		switch {
		case i%10 == 0: // never reads a large answer
			fmt.Fprintf(c, "GET /svc/big HTTP/1.1\r\nHost: gw\r\n%s: %d\r\n\r\n", hdrResponseBodyLen, 4<<20)
		case i%2 == 0: // silent
		default: // a body that stops
			_, _ = io.WriteString(c, "POST /svc/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\nabc")
		}
	}
	var lat []time.Duration
	var failed atomic.Int64
	for i := 0; i < 300; i++ {
		start := time.Now()
		res, _ := tg.do(t, http.MethodGet, "/svc/x", nil, nil)
		if res.StatusCode != 200 {
			failed.Add(1)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("300 GETs beside 300 slow clients: p50 %s, p99 %s, max %s", lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	if failed.Load() != 0 || lat[len(lat)/2] > time.Second {
		t.Fatalf("%d of 300 failed, p50 %s", failed.Load(), lat[len(lat)/2])
	}
}
