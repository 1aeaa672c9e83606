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
	c, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
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

func seenOf(t *testing.T, res *http.Response) seen {
	t.Helper()
	var s seen
	body, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("%d %q: %v", res.StatusCode, body, err)
	}
	return s
}

// Requests the front does not serve itself reach net/http (and gin) with
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
	c, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
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

// A client that hangs up while the upstream has not answered yet cancels
// the upstream request.
func TestFrontClientGoneCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	srv, _ := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	})
	cat := newCatalog()
	cat.set("svc", instanceAt(backendAddr(srv), "svc", "svc-1", "node-a", ""))
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
	waitFor(t, "the request to be in flight", func() bool {
		for _, s := range tg.gw.Stats() {
			if s.Inflight > 0 {
				return true
			}
		}
		return false
	})
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
