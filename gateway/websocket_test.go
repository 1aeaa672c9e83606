package gateway_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
)

// A minimal RFC 6455 endpoint, enough to echo text frames: the tests need a
// real WebSocket handshake and framing, not a library.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsWrite writes one final text frame, masked when mask is set (clients
// must mask, servers must not).
func wsWrite(w io.Writer, payload []byte, mask bool) error {
	hdr := []byte{0x81}
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, m|byte(n))
	case n < 1<<16:
		hdr = append(hdr, m|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, m|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	body := append([]byte(nil), payload...)
	if mask {
		var key [4]byte
		_, _ = rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		for i := range body {
			body[i] ^= key[i%4]
		}
	}
	_, err := w.Write(append(hdr, body...))
	return err
}

// wsRead reads one frame and returns its opcode and unmasked payload.
func wsRead(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	return h[0] & 0x0f, p, nil
}

// startWebSocketEcho serves WebSocket upgrades on any path and echoes every
// text frame, prefixed with the path it was opened on.
func startWebSocketEcho(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || r.Header.Get("Sec-WebSocket-Version") != "13" {
			http.Error(w, "not a websocket handshake", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", wsAccept(r.Header.Get("Sec-WebSocket-Key")))
		if err := brw.Flush(); err != nil {
			return
		}
		for {
			op, p, err := wsRead(brw.Reader)
			if err != nil || op == 0x8 { // error or close
				return
			}
			if err := wsWrite(conn, append([]byte(r.URL.Path+" "), p...), false); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A WebSocket opened through the gateway: the handshake reaches the
// backend with the route's path, the accept key comes back intact, and
// frames of every length class echo both ways.
func TestWebSocketEcho(t *testing.T) {
	backend := startWebSocketEcho(t)
	cat := newCatalog()
	cat.set("chat", instanceAt(backendAddr(backend), "chat", "chat-1", "node-c", "/socket"))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	conn, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	fmt.Fprintf(conn, "GET /chat/room HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", key)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		t.Fatalf("handshake: %d, accept %q; want 101 with %q", res.StatusCode, res.Header.Get("Sec-WebSocket-Accept"), wsAccept(key))
	}
	for _, n := range []int{5, 300, 70000} {
		msg := strings.Repeat("x", n)
		if err := wsWrite(conn, []byte(msg), true); err != nil {
			t.Fatal(err)
		}
		op, p, err := wsRead(br)
		if err != nil || op != 0x1 || string(p) != "/socket/room "+msg {
			t.Fatalf("echo of %d bytes: op %x, %d bytes %.40q, %v", n, op, len(p), p, err)
		}
	}
}

// Request headers over 64 KiB are refused with 431 before any routing.
func TestHeaderLimit(t *testing.T) {
	b := startBackend(t, "b")
	cat := newCatalog()
	cat.set("svc", b.instance("svc", "node-b", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for _, tc := range []struct {
		size int
		want int
	}{
		{8 << 10, http.StatusOK},
		{100 << 10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		hdr := http.Header{"X-Big": {strings.Repeat("h", tc.size)}}
		res, _ := tg.do(t, http.MethodGet, "/svc/", hdr, nil)
		if res.StatusCode != tc.want {
			t.Errorf("a %d-byte header: %d, want %d", tc.size, res.StatusCode, tc.want)
		}
	}
}

// A frame the client sends right behind its upgrade request, in the same
// write, is carried to the instance once it has switched; an instance that
// switches to another protocol than the one asked for is a 502, not a
// tunnel.
func TestTunnelCarriesEarlyBytesAndChecksTheProtocol(t *testing.T) {
	backend := startWebSocketEcho(t)
	wrong := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(io.Discard, conn) // until the gateway lets go
	}))
	t.Cleanup(wrong.Close)
	cat := newCatalog()
	cat.set("chat", instanceAt(backendAddr(backend), "chat", "chat-1", "node-c", ""))
	cat.set("odd", instanceAt(backendAddr(wrong), "odd", "odd-1", "node-o", ""))
	tg := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())

	handshake := func(path string, frame []byte) (net.Conn, *bufio.Reader, *http.Response) {
		conn, err := net.Dial("tcp", tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		var head bytes.Buffer
		fmt.Fprintf(&head, "GET %s HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path)
		head.Write(frame)
		if _, err := conn.Write(head.Bytes()); err != nil { // one write: head and frame
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return conn, br, res
	}

	var frame bytes.Buffer
	if err := wsWrite(&frame, []byte("early"), true); err != nil {
		t.Fatal(err)
	}
	_, br, res := handshake("/chat/room", frame.Bytes())
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %d", res.StatusCode)
	}
	if op, p, err := wsRead(br); err != nil || op != 0x1 || string(p) != "/room early" {
		t.Fatalf("the frame sent with the handshake: op %x %q %v", op, p, err)
	}

	_, _, res = handshake("/odd/x", nil)
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("an instance that switched to h2c when websocket was asked for: %d, want 502", res.StatusCode)
	}
}
