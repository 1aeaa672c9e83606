package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httputil"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// crlfcrlf ends a head.
var crlfcrlf = []byte("\r\n\r\n")

func testConn() *frontConn {
	fc := &frontConn{remote: "127.0.0.1:4321"}
	fc.template = (&http.Request{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Body: http.NoBody,
		RemoteAddr: fc.remote}).WithContext(context.Background())
	return fc
}

// netHTTPRequest reads head as net/http's server would: nil when it would
// refuse it.
func netHTTPRequest(head []byte) *http.Request {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		return nil
	}
	if req.ProtoMajor == 1 && req.ProtoMinor == 1 && len(req.Header["Host"]) > 0 {
		return nil
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil
			}
		}
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return nil
	}
	return req
}

var parseSeeds = []string{
	"GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
	"GET /svc/a/b?x=1&y=%20 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n",
	"HEAD /svc/ HTTP/1.1\r\nhost: gw\r\nconnection: keep-alive, Close\r\nx-a: 1\r\nX-A: 2\r\n\r\n",
	"GET /svc? HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 0\r\nTe: trailers\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: gw\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
	"POST /svc/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\n",
	"GET /svc/ HTTP/1.0\r\nHost: gw\r\n\r\n",
	"GET  /svc/ HTTP/1.1\r\nHost: gw\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n 2\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET /svc/ HTTP/1.1\r\nHost: g w\r\n\r\n",
	"GET /svc/\x00 HTTP/1.1\r\nHost: gw\r\n\r\n",
	"GET http://gw/svc/ HTTP/1.1\r\nHost: gw\r\n\r\n",
	"GET * HTTP/1.1\r\nHost: gw\r\n\r\n",
}

// Whatever request head the front serves itself, net/http would have
// accepted too, and read into the same request: the front never serves a
// request net/http would refuse, nor one it would read differently.
func FuzzFrontParse(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		i := bytes.Index(head, crlfcrlf)
		if i < 0 {
			return
		}
		head = head[:i+4]
		got := testConn().parse(head)
		if got == nil {
			return
		}
		want := netHTTPRequest(head)
		if want == nil {
			t.Fatalf("the front serves %q, which net/http refuses", head)
		}
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.Host != want.Host ||
			got.URL.Path != want.URL.Path || got.URL.RawPath != want.URL.RawPath ||
			got.URL.RawQuery != want.URL.RawQuery || got.URL.ForceQuery != want.URL.ForceQuery ||
			got.Close != want.Close || got.ProtoMinor != want.ProtoMinor {
			t.Fatalf("%q: the front reads %s %q host %q path %q query %q close %v; net/http %s %q host %q path %q query %q close %v",
				head, got.Method, got.RequestURI, got.Host, got.URL.Path, got.URL.RawQuery, got.Close,
				want.Method, want.RequestURI, want.Host, want.URL.Path, want.URL.RawQuery, want.Close)
		}
		if !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("%q: header %v, net/http %v", head, got.Header, want.Header)
		}
		if want.ContentLength != 0 || len(want.TransferEncoding) > 0 {
			t.Fatalf("%q has a body (length %d), which the front does not read", head, want.ContentLength)
		}
	})
}

func TestFrontParseSeeds(t *testing.T) {
	served := 0
	for _, s := range parseSeeds {
		if testConn().parse([]byte(s)) != nil {
			served++
		}
	}
	if served != 5 {
		t.Fatalf("the front serves %d of the seeds, want the first 5", served)
	}
}

var answerSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
	"HTTP/1.1 204 No Content\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
	"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
	"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n",
	"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
}

// Whatever answer head the express path frames itself, http.ReadResponse
// reads with the same status and the same framing.
func FuzzParseAnswerHead(f *testing.F) {
	for _, s := range answerSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, stream []byte, isHead bool) {
		head, _, a, method, ok := framedAnswer(stream, isHead)
		if !ok {
			return
		}
		res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("the express path frames %q, which http.ReadResponse refuses: %v", head, err)
		}
		if res.StatusCode != a.status {
			t.Fatalf("%q: status %d, http.ReadResponse %d", head, a.status, res.StatusCode)
		}
		chunked := len(res.TransferEncoding) == 1 && res.TransferEncoding[0] == "chunked"
		bodyless := isHead || a.status == 204 || a.status == 304
		switch {
		case bodyless:
			if a.cl != 0 || a.chunked {
				t.Fatalf("%q: a body where there is none", head)
			}
		case a.chunked != chunked || !a.chunked && res.ContentLength != a.cl:
			t.Fatalf("%q: chunked %v length %d; http.ReadResponse chunked %v length %d", head, a.chunked, a.cl, chunked, res.ContentLength)
		}
		if a.keep == res.Close {
			t.Fatalf("%q: keep %v, http.ReadResponse Close %v", head, a.keep, res.Close)
		}
		for _, bad := range []string{"\r\n ", "\r\n\t"} {
			if strings.Contains(string(head), bad) {
				t.Fatalf("%q: obs-fold served", head)
			}
		}
	})
}

func TestParseAnswerHeadSeeds(t *testing.T) {
	var ok []int
	for i, s := range answerSeeds {
		if parseAnswerHead([]byte(s), false).ok {
			ok = append(ok, i)
		}
	}
	if want := []int{0, 1, 2, 3, 4, 5}; !reflect.DeepEqual(ok, want) {
		t.Fatalf("plain answers: seeds %v, want %v", ok, want)
	}
}

// framedAnswer cuts an upstream's answer stream after its head and reports
// how the express path frames it (ok false: it does not frame it itself),
// with the method of the request it answers.
func framedAnswer(stream []byte, isHead bool) (head, rest []byte, a expressAnswer, method string, ok bool) {
	i := bytes.Index(stream, crlfcrlf)
	if i < 0 {
		return nil, nil, a, "", false
	}
	head, rest = stream[:i+4], stream[i+4:]
	a = parseAnswerHead(head, isHead)
	method = http.MethodGet
	if isHead {
		method = http.MethodHead
	}
	return head, rest, a, method, a.ok
}

// Hostile upstream answers: bodies with bad chunk framing and bytes past
// the end.
var answerStreamSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nstray",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhelloXX0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nnot a trailer\r\n\r\n",
	"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned",
	"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
}

// Whatever answer the express path frames itself, it copies a body that
// http.ReadResponse reads the same, and it calls a body whole only when
// http.ReadResponse reads it without error; bytes past the end are left
// unread (the express path then closes the connection).
func FuzzCopyAnswerBody(f *testing.F) {
	for _, s := range answerStreamSeeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, stream []byte, isHead bool) {
		_, rest, a, method, ok := framedAnswer(stream, isHead)
		if !ok {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(rest), 4<<10)
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		upOK, clientOK := copyAnswerBody(bw, br, &a, func() {})
		_ = bw.Flush()
		if !clientOK {
			t.Fatalf("%q: writing to a buffer failed", stream)
		}
		res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(stream)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: http.ReadResponse: %v", stream, err)
		}
		want, werr := io.ReadAll(res.Body)
		if !upOK {
			return // the express path gave up on it: the client sees a broken answer
		}
		if werr != nil {
			t.Fatalf("%q: the express path copied a body whole that net/http reads with %v", stream, werr)
		}
		got := out.Bytes()
		if a.chunked {
			if got, err = io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(got))); err != nil {
				t.Fatalf("%q: the copied chunked body does not decode: %v", stream, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: the express path copied body %q, net/http reads %q", stream, got, want)
		}
	})
}
