package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// rawExchange sends raw bytes to the gateway on a new connection and reads
// n answers.
func rawExchange(t *testing.T, tg *testGateway, raw string, n int) []*http.Response {
	t.Helper()
	br := sendRaw(t, tg, raw)
	var out []*http.Response
	for i := range n {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d of %d to %q: %v", i+1, n, raw, err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("answer %d body: %v", i+1, err)
		}
		res.Body = io.NopCloser(strings.NewReader(string(body)))
		out = append(out, res)
	}
	return out
}

// sendRaw sends raw bytes to the gateway on a new connection, closed at the
// end of the test, and returns a reader of its answers.
func sendRaw(t *testing.T, tg *testGateway, raw string) *bufio.Reader {
	t.Helper()
	c, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return bufio.NewReader(c)
}

func seenOf(t *testing.T, res *http.Response) seen {
	t.Helper()
	var s seen
	body, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("%d %q: %v", res.StatusCode, body, err)
	}
	return s
}

// Requests the front does not serve itself reach net/http with
// every byte the front had read, and are answered as before; so are
// malformed ones, with net/http's own errors.
func TestFrontHandsOver(t *testing.T) {
	b := startBackend(t, "b")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for _, tc := range []struct {
		name, raw string
		status    int
		uri       string // the request URI the backend saw, when it saw one
		bodyLen   int
	}{
		{"simple GET (the front's)", "GET /svc/a?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n", 200, "/a?x=1", 0},
		{"POST with a body", "POST /svc/p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello", 200, "/p", 5},
		{"GET with a body", "GET /svc/g HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc", 200, "/g", 3},
		{"chunked GET", "GET /svc/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, "/c", 3},
		{"HTTP/1.0", "GET /svc/old HTTP/1.0\r\nHost: gw\r\n\r\n", 200, "/old", 0},
		{"escaped path", "GET /svc/a%2Fb HTTP/1.1\r\nHost: gw\r\n\r\n", 200, "/a%2Fb", 0},
		{"bare LF", "GET /svc/lf HTTP/1.1\nHost: gw\n\n", 200, "/lf", 0},
		{"Expect", "GET /svc/e HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\r\n", 200, "/e", 0},
		{"DELETE", "DELETE /svc/d HTTP/1.1\r\nHost: gw\r\n\r\n", 200, "/d", 0},
		{"no Host", "GET /svc/ HTTP/1.1\r\n\r\n", 400, "", 0},
		{"two Hosts", "GET /svc/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "", 0},
		{"space before colon", "GET /svc/ HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\n", 400, "", 0},
		// net/http joins folded lines, and lets Transfer-Encoding win over
		// Content-Length (RFC 9112 6.3), so these two are served.
		{"obs-fold", "GET /svc/f HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n  2\r\n\r\n", 200, "/f", 0},
		{"CL and TE", "POST /svc/t HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200, "/t", 0},
		{"two Content-Lengths", "GET /svc/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\nx", 400, "", 0},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 404, "", 0},
		{"no service", "GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := rawExchange(t, tg, tc.raw, 1)[0]
			if res.StatusCode != tc.status {
				body, _ := io.ReadAll(res.Body)
				t.Fatalf("%d %q, want %d", res.StatusCode, body, tc.status)
			}
			if tc.uri == "" {
				return
			}
			s := seenOf(t, res)
			if s.RequestURI != tc.uri || s.BodyLen != tc.bodyLen {
				t.Fatalf("backend saw %s %q with %d body bytes, want %q with %d", s.Method, s.RequestURI, s.BodyLen, tc.uri, tc.bodyLen)
			}
		})
	}
}

// Pipelined requests are answered in order on one connection, also when a
// request the front hands over follows ones it served.
func TestFrontPipelining(t *testing.T) {
	b := startBackend(t, "b")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	raw := "GET /svc/1 HTTP/1.1\r\nHost: gw\r\n\r\n" +
		"HEAD /svc/2 HTTP/1.1\r\nHost: gw\r\n\r\n" +
		"GET /svc/3 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: mine\r\n\r\n" +
		"POST /svc/4 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi" +
		"GET /svc/5 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
	br := sendRaw(t, tg, raw)
	for i, want := range []string{"/1", "/2", "/3", "/4", "/5"} {
		method := http.MethodGet
		if want == "/2" {
			method = http.MethodHead
		}
		res, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("answer %d: %d %q %v", i+1, res.StatusCode, body, err)
		}
		if method == http.MethodHead {
			if len(body) != 0 || res.ContentLength <= 0 {
				t.Fatalf("HEAD: %d body bytes, Content-Length %d; want none and the GET's length", len(body), res.ContentLength)
			}
			continue
		}
		var s seen
		if err := json.Unmarshal(body, &s); err != nil || s.RequestURI != want {
			t.Fatalf("answer %d is for %q (%v), want %q", i+1, s.RequestURI, err, want)
		}
		if want == "/3" && (s.Header.Get("X-Request-Id") != "mine" || res.Header.Get("X-Request-Id") != "mine") {
			t.Fatalf("request id: upstream got %q, client %q; want mine", s.Header.Get("X-Request-Id"), res.Header.Get("X-Request-Id"))
		}
		if want == "/5" && !res.Close {
			t.Fatal("Connection: close was not answered in kind")
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close the gateway did not close: %v", err)
	}
}

// waitingService is a catalog with service "svc" on a backend that answers
// nothing until its request is cancelled, which closes cancelled.
func waitingService(t *testing.T) (*fakeCatalog, <-chan struct{}) {
	t.Helper()
	cancelled := make(chan struct{})
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	return cat, cancelled
}

// waitInflight waits until the gateway has a request out upstream.
func waitInflight(t *testing.T, tg *testGateway) {
	t.Helper()
	waitFor(t, "the request to be in flight", func() bool {
		for _, s := range tg.gw.Stats() {
			if s.Inflight > 0 {
				return true
			}
		}
		return false
	})
}

// A client that hangs up while the upstream has not answered yet cancels
// the upstream request.
func TestFrontClientGoneCancelsUpstream(t *testing.T) {
	cat, cancelled := waitingService(t)
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.url+"/svc/wait", nil)
	errc := make(chan error, 1)
	go func() {
		res, err := tg.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	waitInflight(t, tg)
	cancel()
	<-errc
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled after the client went away")
	}
}

// Chunked answers, trailers included, and answers cut short reach the
// client as the upstream sent them.
func TestFrontStreamsAnswers(t *testing.T) {
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/trailers":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "part two")
			w.Header().Set("X-Sum", "42")
		case "/short":
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, "only this")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/big":
			_, _ = w.Write(pattern(1 << 20))
		}
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	res, body := tg.do(t, http.MethodGet, "/svc/trailers", nil, nil)
	if string(body) != "part one, part two" || res.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("chunked with trailers: %q, trailer %v", body, res.Trailer)
	}
	res, body = tg.do(t, http.MethodGet, "/svc/big", nil, nil)
	if res.StatusCode != http.StatusOK || string(body) != string(pattern(1<<20)) {
		t.Fatalf("1 MiB answer: %d, %d bytes", res.StatusCode, len(body))
	}
	res, body = tg.do(t, http.MethodGet, "/svc/nocontent", nil, nil)
	if res.StatusCode != http.StatusNoContent || len(body) != 0 {
		t.Fatalf("204: %d %q", res.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodGet, tg.url+"/svc/short", nil)
	res, err := tg.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Fatal("an answer shorter than its Content-Length reached the client as if whole")
	}
}

// rawUpstream is an upstream that answers every request it reads with the
// same raw bytes, then closes the connection when close is set.
func rawUpstream(t *testing.T, answer string, closeAfter bool) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, answer); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

// Whatever an upstream answers, the client gets what the general path
// makes of it: the express path frames plain answers itself and hands the
// rest on.
func TestFrontUpstreamAnswers(t *testing.T) {
	bigHead := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 6000) + "\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct {
		name       string
		answer     string
		closeAfter bool
		status     int
		body       string
		header     string // a header the client must see, "name: value"
		broken     bool   // the client must see a broken answer
	}{
		{name: "plain", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok", status: 200, body: "ok", header: "X-A: 1"},
		{name: "chunked with trailer", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n", status: 200, body: "ok"},
		{name: "HTTP/1.0 until close", answer: "HTTP/1.0 200 OK\r\n\r\nuntil close", closeAfter: true, status: 200, body: "until close"},
		{name: "interim then final", answer: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", status: 200, body: "ok"},
		{name: "bare LF", answer: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", status: 200, body: "ok"},
		{name: "head over 4 KiB", answer: bigHead, status: 200, body: "ok"},
		{name: "hop-by-hop dropped", answer: "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok", status: 200, body: "ok"},
		{name: "404 passed on", answer: "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", status: 404, body: "nope"},
		{name: "503 passed on, no other instance", answer: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", status: 503, body: "busy"},
		{name: "garbage", answer: "SSH-2.0-OpenSSH\r\n\r\n", closeAfter: true, status: 502},
		{name: "cut short", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", closeAfter: true, status: 200, broken: true},
		{name: "bad chunk", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", closeAfter: true, status: 200, broken: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cat := newCatalog()
			cat.set("svc", instanceAt(rawUpstream(t, tc.answer, tc.closeAfter), "svc", "raw-1", "node-r", ""))
			tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
			for i := range 2 { // the second on a reused connection, where one is kept
				req, _ := http.NewRequest(http.MethodGet, tg.url+"/svc/", nil)
				res, err := tg.client.Do(req)
				if tc.broken && err != nil {
					continue // broken before the head even left, or after
				}
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if tc.broken {
					if err == nil {
						t.Fatalf("request %d: a broken answer (%q) reached the client as whole", i, body)
					}
					continue
				}
				if err != nil || res.StatusCode != tc.status || (tc.body != "" && string(body) != tc.body) {
					t.Fatalf("request %d: %d %q %v; want %d %q", i, res.StatusCode, body, err, tc.status, tc.body)
				}
				if tc.header != "" {
					k, v, _ := strings.Cut(tc.header, ": ")
					if res.Header.Get(k) != v {
						t.Fatalf("request %d: %s = %q, want %q", i, k, res.Header.Get(k), v)
					}
				}
				if res.Header.Get("X-Secret") != "" || res.Header.Get("Keep-Alive") != "" || res.Header.Get("Link") != "" {
					t.Fatalf("request %d: hop-by-hop or interim headers passed on: %v", i, res.Header)
				}
				if tc.name == "chunked with trailer" && res.Trailer.Get("X-T") != "t" {
					t.Fatalf("request %d: trailer %v", i, res.Trailer)
				}
				if res.Header.Get("X-Request-Id") == "" || res.Header.Get("X-Herd-Upstream") != "node-r" {
					t.Fatalf("request %d: the gateway's own headers are missing: %v", i, res.Header)
				}
			}
		})
	}
}

// A request whose head came in pieces (under the read-header deadline) is
// watched like any other: the client going away long after that deadline
// still cancels the upstream request.
func TestFrontClientGoneAfterSlowHead(t *testing.T) {
	cat, cancelled := waitingService(t)
	cfg := gateway.DefaultConfig()
	cfg.ReadHeaderTimeout = 200 * time.Millisecond
	tg := startGateway(t, cfg, cat, newLiveness())
	c, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /svc/wait HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	// The fault: the rest of the head comes 50 ms later, so the gateway
	// reads the head in two pieces.
	<-time.After(50 * time.Millisecond)
	if _, err := io.WriteString(c, "Host: gw\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitInflight(t, tg)
	// The fault, continued: the client leaves well after the read-header
	// deadline of its head has passed.
	<-time.After(3 * cfg.ReadHeaderTimeout)
	c.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled after the client went away")
	}
}
