package gateway_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/secure"
)

// hostileUpstream is a hostile instance: a TCP listener whose handler reads and
// writes raw bytes, recording every request head it read.
type hostileUpstream struct {
	ln    net.Listener
	mu    sync.Mutex
	heads []string
}

// startHostileUpstream serves every connection with handle.
func startHostileUpstream(t testing.TB, handle func(u *hostileUpstream, c net.Conn, br *bufio.Reader)) *hostileUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &hostileUpstream{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(u, c, bufio.NewReader(c))
			}()
		}
	}()
	return u
}

// readHead reads one request head, records it and returns it ("" at EOF).
func (u *hostileUpstream) readHead(br *bufio.Reader) string {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return ""
		}
		if line == "\r\n" {
			break
		}
	}
	u.mu.Lock()
	u.heads = append(u.heads, b.String())
	u.mu.Unlock()
	return b.String()
}

func (u *hostileUpstream) seen() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.heads, "")
}

func (u *hostileUpstream) instance(service string) api.Instance {
	return instanceAt(u.ln.Addr().(*net.TCPAddr), service, "raw", "node-raw", "")
}

// dialGateway opens a client connection to the gateway that writes raw bytes.
func dialGateway(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// An h2c upgrade must not become a tunnel: the request is served as plain
// HTTP/1.1, the instance never sees the Upgrade, an instance that answers
// 101 anyway is a 502, and what the client sends next is parsed by the
// gateway as requests, never passed on as raw bytes.
func TestH2CUpgradeIsNoTunnel(t *testing.T) {
	for _, hostile := range []bool{false, true} {
		name := map[bool]string{false: "instance answers plainly", true: "instance switches anyway"}[hostile]
		t.Run(name, func(t *testing.T) {
			up := startHostileUpstream(t, func(u *hostileUpstream, c net.Conn, br *bufio.Reader) {
				for {
					head := u.readHead(br)
					if head == "" {
						return
					}
					if hostile {
						_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
						_, _ = io.Copy(io.Discard, io.TeeReader(br, recorder{u}))
						return
					}
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
				}
			})
			cat := newCatalog()
			cat.set("svc", up.instance("svc"))
			tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
			c, br := dialGateway(t, tg.addr)
			_, _ = io.WriteString(c, "GET /svc/ HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
				"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			want := map[bool]int{false: 200, true: 502}[hostile]
			if res.StatusCode != want {
				t.Fatalf("h2c upgrade: %d %s, want %d", res.StatusCode, body, want)
			}
			// What a tunnel would have carried: a request for another
			// path, outside the instance's prefix.
			_, _ = io.WriteString(c, "GET /admin/../../internal HTTP/1.1\r\nHost: gw\r\n\r\n")
			if res, err := http.ReadResponse(br, nil); err == nil {
				res.Body.Close()
				if res.StatusCode == 200 || res.StatusCode == 101 {
					t.Fatalf("the bytes after the upgrade got %d", res.StatusCode)
				}
			}
			seen := up.seen()
			if strings.Contains(strings.ToLower(seen), "upgrade: h2c") || strings.Contains(strings.ToLower(seen), "http2-settings:") {
				t.Fatalf("the instance was asked to upgrade:\n%s", seen)
			}
			if strings.Contains(seen, "internal") {
				t.Fatalf("the bytes after the upgrade reached the instance:\n%s", seen)
			}
		})
	}
}

// recorder appends what a tunnel carried to the upstream's record.
type recorder struct{ u *hostileUpstream }

func (r recorder) Write(p []byte) (int, error) {
	r.u.mu.Lock()
	r.u.heads = append(r.u.heads, string(p))
	r.u.mu.Unlock()
	return len(p), nil
}

// A request with both Content-Length and Transfer-Encoding is framed by
// the latter and the connection closes after its answer (RFC 9112 §6.1):
// a request pipelined behind it is not served.
func TestContentLengthWithTransferEncodingCloses(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "n1", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	c, br := dialGateway(t, tg.addr)
	_, _ = io.WriteString(c, "POST /svc/first HTTP/1.1\r\nHost: gw\r\nContent-Length: 37\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"0\r\n\r\n"+"GET /svc/second HTTP/1.1\r\nHost: gw\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(res.Body)
	if res.StatusCode != 200 || !res.Close {
		t.Fatalf("first answer %d, close %v: want 200 and Connection: close", res.StatusCode, res.Close)
	}
	if res, err := http.ReadResponse(br, nil); err == nil {
		res.Body.Close()
		t.Fatalf("the request pipelined behind it was answered: %d", res.StatusCode)
	}
	if n := b.hits.Load(); n != 1 {
		t.Fatalf("the backend served %d requests, want 1", n)
	}
}

// X-Herd-Upstream names an internal node: the public never gets it (not
// even when the instance sends its own), trusted proxies and
// --debug-headers do.
func TestUpstreamHeaderOnlyForTrustedClients(t *testing.T) {
	b := startBackend(t, "b1")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "node-b", ""))
	liar := http.Header{"X-Test-Upstream-Liar": {"1"}}
	public := startPublicGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
		res, _ := public.do(t, method, "/svc/x", liar, strings.NewReader(map[string]string{"POST": "x"}[method]))
		if v, ok := res.Header["X-Herd-Upstream"]; ok {
			t.Fatalf("%s: a public client got X-Herd-Upstream %q", method, v)
		}
	}
	cfg := gateway.DefaultConfig()
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	trusted := startPublicGateway(t, cfg, cat, newLiveness())
	for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
		res, _ := trusted.do(t, method, "/svc/x", liar, strings.NewReader(map[string]string{"POST": "x"}[method]))
		if got := res.Header.Get("X-Herd-Upstream"); got != "node-b" {
			t.Fatalf("%s: a trusted proxy got X-Herd-Upstream %q, want node-b", method, got)
		}
	}
}

// TRACE reaches a service only when it opts in.
func TestTraceOptIn(t *testing.T) {
	b := startBackend(t, "b1")
	inst := b.instance("svc", "n1", "")
	inst.Meta = map[string]string{gateway.MetaAllowTrace: "true"}
	cat := newCatalog()
	cat.set("svc", inst)
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	res, body := tg.do(t, http.MethodTrace, "/svc/x", nil, nil)
	if res.StatusCode != 200 {
		t.Fatalf("TRACE to a service that opted in: %d %s", res.StatusCode, body)
	}
}

// A malformed chunked request body is the client's fault: 400, as net/http
// answers, never counted against the instance, never retried or hedged. A
// flood of them ejects nothing.
func TestClientBodyErrorsAreTheClients(t *testing.T) {
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	cat := newCatalog()
	cat.set("svc", b1.instance("svc", "n1", ""), b2.instance("svc", "n2", ""))
	cfg := gateway.DefaultConfig()
	cfg.HedgeAfter = 5 * time.Millisecond
	tg := startGateway(t, cfg, cat, newLiveness())
	bad := map[string]string{
		"hex overflow": "fffffffffffffffff\r\nx\r\n0\r\n\r\n",
		"0x prefix":    "0x5\r\nhello\r\n0\r\n\r\n",
		"plus sign":    "+5\r\nhello\r\n0\r\n\r\n",
		"bare LF":      "5\nhello\n0\n\n",
		"no CRLF":      "5\r\nhelloXX0\r\n\r\n",
	}
	for round := 0; round < 10; round++ {
		for name, chunks := range bad {
			c, br := dialGateway(t, tg.addr)
			_, _ = io.WriteString(c, "POST /svc/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"+chunks)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			body, _ := io.ReadAll(res.Body)
			c.Close()
			if res.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s: %d %s, want 400", name, res.StatusCode, body)
			}
			if strings.Contains(string(body), "127.0.0.1") || strings.Contains(string(body), "upstream") {
				t.Fatalf("%s: the answer blames or names the instance: %s", name, body)
			}
		}
	}
	for _, s := range tg.gw.Stats() {
		if s.Ejections != 0 || s.Retries != 0 || s.UpstreamErrors != 0 {
			t.Fatalf("bad client bodies counted against the instances: %+v", s)
		}
	}
	// Both instances still serve.
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		res, body := tg.do(t, http.MethodPost, "/svc/x", nil, strings.NewReader("ok"))
		if res.StatusCode != 200 {
			t.Fatalf("a good request after the flood: %d %s", res.StatusCode, body)
		}
		seen[res.Header.Get("X-Herd-Upstream")] = true
	}
	if len(seen) != 2 {
		t.Fatalf("after the flood only %v served", seen)
	}
}

// The express path's write to the instance has its own deadline: an
// instance slow to accept (here a TLS handshake that takes 200 ms, past
// the 50 ms client-watch delay) still gets the request and answers.
func TestSlowUpstreamAcceptIsNoTimeout(t *testing.T) {
	ca, err := secure.NewCA("gateway-test")
	if err != nil {
		t.Fatal(err)
	}
	server := issue(t, ca, secure.CertRequest{Name: "host", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	b := startBackendTLS(t, "slow-accept", &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			time.Sleep(200 * time.Millisecond) // the fault: a slow accept
			return nil, nil
		},
		Certificates: []tls.Certificate{server},
	})
	inst := b.instance("svc", "n1", "")
	inst.TLS = true
	cat := newCatalog()
	cat.set("svc", inst)
	cfg := gateway.DefaultConfig()
	cfg.DialTimeout = 2 * time.Second
	cfg.UpstreamTLS = &tls.Config{RootCAs: ca.Pool()}
	tg := startGateway(t, cfg, cat, newLiveness())
	// A new connection each time: the gateway's pool keeps none idle
	// between these (the backend closes them).
	for i := 0; i < 3; i++ {
		res, body := tg.do(t, http.MethodGet, "/svc/x", http.Header{"Connection": {"close"}}, nil)
		if res.StatusCode != 200 {
			t.Fatalf("request %d through a slow-accepting instance: %d %s", i, res.StatusCode, body)
		}
		b.srv.CloseClientConnections()
	}
}

// An instance that sends bytes past the end of an answer (after HEAD, 204,
// 304, or a Content-Length body), a moment later, must not have its
// connection reused: the next client would read those bytes as its
// answer, and every answer after would be shifted by one.
func TestStrayUpstreamBytesCloseTheConnection(t *testing.T) {
	for _, tc := range []struct {
		name, method, answer string
	}{
		{"HEAD", http.MethodHead, "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n"},
		{"204", http.MethodGet, "HTTP/1.1 204 No Content\r\n\r\n"},
		{"304", http.MethodGet, "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
		{"Content-Length", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{"Content-Length, general path", http.MethodDelete, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var strays sync.WaitGroup
			strays.Add(1)
			up := startHostileUpstream(t, func(u *hostileUpstream, c net.Conn, br *bufio.Reader) {
				for {
					head := u.readHead(br)
					if head == "" {
						return
					}
					if strings.Contains(head, "/victim") {
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nvictim")
						continue
					}
					_, _ = io.WriteString(c, tc.answer)
					time.Sleep(30 * time.Millisecond) // the fault: bytes a moment later
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned")
					strays.Done()
				}
			})
			cat := newCatalog()
			cat.set("svc", up.instance("svc"))
			tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
			res, _ := tg.do(t, tc.method, "/svc/attack", nil, nil)
			if res.StatusCode >= 500 {
				t.Fatalf("attack answer: %d", res.StatusCode)
			}
			strays.Wait()
			for i := 0; i < 3; i++ {
				res, body := tg.do(t, tc.method, "/svc/victim", nil, nil)
				if tc.method != http.MethodHead && string(body) != "victim" {
					t.Fatalf("victim request %d got %d %q", i, res.StatusCode, body)
				}
				if res.ContentLength == 8 {
					t.Fatalf("victim request %d got the stray answer", i)
				}
			}
		})
	}
}

// Redirects and content locations that point into the instance's path
// prefix (as a path, or as an absolute URL on the instance's own address)
// are rewritten into the route; others are left alone.
func TestUpstreamRedirectsRewrittenIntoTheRoute(t *testing.T) {
	var self string // the instance's host:port, once known
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		switch r.URL.Path {
		case "/echo/rel":
			h.Set("Location", "/echo/x?y=1")
		case "/echo/abs":
			h.Set("Location", "http://"+self+"/echo/y")
		case "/echo/refresh":
			h.Set("Refresh", "0; url=/echo/z")
		case "/echo/content":
			h.Set("Content-Location", "/echo/c")
		case "/echo/root":
			h.Set("Location", "/echo")
		case "/echo/outside":
			h.Set("Location", "/echoes/x")
		case "/echo/elsewhere":
			h.Set("Location", "https://login.example/echo/x")
		case "/echo/relative":
			h.Set("Location", "next")
		}
		w.WriteHeader(http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	self = srv.Listener.Addr().String()
	cat := newCatalog()
	cat.set("alias", instanceAt(backendAddr(srv), "alias", "a1", "n1", "/echo"))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for path, want := range map[string][2]string{
		"/alias/rel":       {"Location", "/alias/x?y=1"},
		"/alias/abs":       {"Location", "/alias/y"},
		"/alias/refresh":   {"Refresh", "0; url=/alias/z"},
		"/alias/content":   {"Content-Location", "/alias/c"},
		"/alias/root":      {"Location", "/alias"},
		"/alias/outside":   {"Location", "/echoes/x"},
		"/alias/elsewhere": {"Location", "https://login.example/echo/x"},
		"/alias/relative":  {"Location", "next"},
	} {
		// GET: the express path hands these over; DELETE and POST: the
		// general path, without and with a body.
		for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
			req, _ := http.NewRequest(method, tg.url+path, strings.NewReader(map[string]string{"POST": "x"}[method]))
			res, err := (&http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			}}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if got := res.Header.Get(want[0]); got != want[1] {
				t.Errorf("%s %s: %s %q, want %q", method, path, want[0], got, want[1])
			}
		}
	}
}
