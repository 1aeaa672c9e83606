package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// The front is the gateway's own HTTP/1.1 server. Nearly all gateway
// traffic is GET and HEAD requests without a body from HTTP/1.1 clients;
// for those, net/http's server costs more CPU than everything else the
// gateway does (parsing into maps, a goroutine per request to notice a
// client going away, a writer stack of three layers). The front reads such
// requests itself into a plain *http.Request, runs its handler (the one
// net/http runs too: the gateway's serve), and writes the answer straight
// to the connection. It names no upstream type: what a request waits on is
// aborted, when its client goes away, through waitOn.
//
// Anything else goes to net/http, untouched: at the first request on a
// connection that is not simple (another method, a body, an upgrade,
// Expect, HTTP/1.0, an escaped or unusual path, a head over frontBufSize,
// anything malformed or merely odd), the connection, with the bytes read
// so far, is handed to the fallback net/http server, which serves it for
// the rest of its life. The front never answers a request it has not fully
// understood: whatever it is unsure of, net/http decides, so malformed
// requests get net/http's answers (400, 431, 505) and smuggling tricks
// (Transfer-Encoding, several Content-Length values, bare LF, obs-fold)
// never reach the front's parser.
const (
	// frontBufSize is the read buffer of a client connection, and so the
	// largest request head the front serves itself; larger heads (up to
	// maxHeaderBytes) are served by net/http.
	frontBufSize = 8 << 10
	// frontWriteBufSize buffers the answer; a body that fits with its
	// head and is done before the handler returns goes out with a
	// Content-Length in one write.
	frontWriteBufSize = 8 << 10
	// bufferBeforeChunking is how much body is held back, waiting for the
	// handler to finish, so that the answer can carry a Content-Length
	// instead of being chunked (net/http holds 2 KiB).
	bufferBeforeChunking = 4 << 10
	// watchClientAfter: a request not answered within this long starts a
	// read of the client connection, so that the client going away
	// cancels the upstream request. Quicker requests are not worth the
	// goroutine.
	watchClientAfter = 50 * time.Millisecond
)

// front accepts the gateway's client connections.
type front struct {
	handler  http.Handler // serves every request the front reads
	fallback *http.Server // serves the connections the front hands over
	log      *slog.Logger
	base     context.Context // the parent of every request's context
	// readHeaderTimeout and idleTimeout are net/http's: the first
	// request's head, and the wait for the next one.
	readHeaderTimeout, idleTimeout time.Duration
	handoff                        *connQueue // connections for fallback

	mu    sync.Mutex
	conns map[*frontConn]struct{}
	lns   map[net.Listener]struct{}
	// closing is set by Shutdown: no new connection, no more requests on
	// idle ones, Connection: close on the answers still being written.
	closing atomic.Bool
	srvOnce sync.Once // starts fallback on the handoff queue
}

func newFront(h http.Handler, fallback *http.Server, log *slog.Logger, base context.Context) *front {
	return &front{handler: h, fallback: fallback, log: log, base: base,
		readHeaderTimeout: fallback.ReadHeaderTimeout, idleTimeout: fallback.IdleTimeout,
		handoff: newConnQueue(), conns: map[*frontConn]struct{}{}, lns: map[net.Listener]struct{}{}}
}

// serve accepts connections on ln until it fails or Shutdown closes it.
func (f *front) serve(ln net.Listener) error {
	f.mu.Lock()
	if f.closing.Load() {
		f.mu.Unlock()
		_ = ln.Close()
		return http.ErrServerClosed
	}
	f.lns[ln] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.lns, ln)
		f.mu.Unlock()
		_ = ln.Close()
	}()
	f.srvOnce.Do(func() {
		f.handoff.addr = ln.Addr()
		go func() {
			if err := f.fallback.Serve(f.handoff); err != nil && !errors.Is(err, http.ErrServerClosed) {
				f.log.Error("gateway: net/http server stopped", "err", err)
			}
		}()
	})
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.closing.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http
				// does, instead of spinning or giving up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.log.Warn("gateway: accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		fc := f.newConn(c)
		if fc == nil {
			continue // closing
		}
		go fc.serve()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (f *front) newConn(c net.Conn) *frontConn {
	fc := &frontConn{f: f, c: c, remote: c.RemoteAddr().String()}
	fc.cr.c = c
	fc.br = bufio.NewReaderSize(&fc.cr, frontBufSize)
	fc.bw = bufio.NewWriterSize(c, frontWriteBufSize)
	fc.ctx, fc.cancel = context.WithCancel(f.base)
	fc.template = (&http.Request{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Body: http.NoBody,
		RemoteAddr: fc.remote}).WithContext(fc.ctx)
	fc.w.fc = fc
	fc.w.hdr = make(http.Header, 8)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing.Load() {
		fc.cancel()
		_ = c.Close()
		return nil
	}
	f.conns[fc] = struct{}{}
	return fc
}

// close stops accepting and closes the idle connections; the others close
// after their current answer.
func (f *front) close() {
	f.mu.Lock()
	f.closing.Store(true)
	for ln := range f.lns {
		_ = ln.Close()
	}
	f.mu.Unlock()
	// The hand-off queue is the fallback server's listener: its Shutdown closes it.
	f.closeIdle()
}

// closeIdle closes the connections waiting for a request and reports
// whether none is left.
func (f *front) closeIdle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		if fc.state.Load() == connIdle {
			fc.abort()
		}
	}
	return len(f.conns) == 0
}

// closeAll closes every connection, busy or not.
func (f *front) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		fc.abort()
	}
}

// wait waits until every connection has closed, closing those that turn
// idle, or until ctx is done.
func (f *front) wait(ctx context.Context) error {
	tick := 5 * time.Millisecond
	for !f.closeIdle() {
		t := time.NewTimer(tick)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		tick = min(2*tick, 100*time.Millisecond)
	}
	return nil
}

const (
	connIdle int32 = iota
	connActive
)

// frontConn is one client connection served by the front.
type frontConn struct {
	f      *front
	c      net.Conn
	cr     connReader
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string
	state  atomic.Int32
	// ctx is the context of every request on the connection, cancelled
	// when the client is found gone, the connection ends, or Shutdown
	// gives up.
	ctx    context.Context
	cancel context.CancelFunc
	// template is the request every parse copies: the connection's
	// context, address and protocol.
	template *http.Request
	w        frontWriter
	// idleUntil is the read deadline last armed for an idle wait; it is
	// re-armed only when it is over a second old.
	idleUntil time.Time
	watch     clientWatch
	closed    atomic.Bool
	// waiting is what the request being served waits on (the express
	// path's upstream connection: the front names no upstream type),
	// which a client found gone aborts.
	waitMu  sync.Mutex
	waiting deadliner
}

// abort closes the connection from another goroutine.
func (fc *frontConn) abort() {
	if fc.closed.CompareAndSwap(false, true) {
		_ = fc.c.Close()
	}
}

func (fc *frontConn) serve() {
	handedOff := false
	defer func() { fc.close(recover(), handedOff) }()
	// A new connection has ReadHeaderTimeout from its accept to send its
	// first request head, as net/http gives it: a connection that sends
	// nothing is not kept for the idle timeout.
	first := true
	if err := fc.c.SetReadDeadline(time.Now().Add(fc.f.readHeaderTimeout)); err != nil {
		return
	}
	for {
		req, n, ok := fc.next(first)
		first = false
		if !ok {
			return
		}
		if req == nil {
			handedOff = fc.handOff()
			return
		}
		_, _ = fc.br.Discard(n)
		fc.w.reset(req)
		fc.f.handler.ServeHTTP(&fc.w, req)
		fc.watch.stop(fc)
		if !fc.w.finish() || fc.w.closeAfter || fc.ctx.Err() != nil {
			return
		}
	}
}

// next waits for the connection's next request head (first: its first)
// and reads it: req, with its head's length n, when the front serves it;
// nil when net/http is to. ok is false when the connection is done: the
// client closed it or stayed idle too long, or the gateway is closing.
func (fc *frontConn) next(first bool) (req *http.Request, n int, ok bool) {
	fc.state.Store(connIdle)
	if fc.f.closing.Load() {
		return nil, 0, false
	}
	idle := fc.f.idleTimeout
	if now := time.Now(); !first && fc.idleUntil.Sub(now) < idle-time.Second {
		fc.idleUntil = now.Add(idle)
		if err := fc.c.SetReadDeadline(fc.idleUntil); err != nil {
			return nil, 0, false
		}
	}
	if _, err := fc.br.Peek(1); err != nil {
		return nil, 0, false
	}
	fc.state.Store(connActive)
	n, err := fc.readHead(first)
	if err != nil {
		return nil, 0, false
	}
	if n > 0 {
		head, _ := fc.br.Peek(n)
		req = fc.parse(head)
	}
	return req, n, true
}

// close ends the connection's service: it logs a handler's panic (p, not
// http.ErrAbortHandler, which only breaks the connection), and closes the
// connection unless net/http has it now.
func (fc *frontConn) close(p any, handedOff bool) {
	if p != nil && p != http.ErrAbortHandler {
		buf := make([]byte, 64<<10)
		buf = buf[:runtime.Stack(buf, false)]
		fc.f.log.Error("gateway: panic serving a request", "remote", fc.remote, "panic", fmt.Sprint(p), "stack", string(buf))
	}
	fc.watch.stop(fc)
	fc.cancel()
	fc.f.mu.Lock()
	delete(fc.f.conns, fc)
	fc.f.mu.Unlock()
	if !handedOff {
		fc.abort()
	}
}

// readHead waits for a whole request head in the read buffer and returns
// its length, or 0 when the head does not fit. armed says the header
// deadline is set already (the first request's, from the accept).
func (fc *frontConn) readHead(armed bool) (int, error) {
	for {
		buf, _ := fc.br.Peek(fc.br.Buffered())
		n, more := wire.HeadLen(buf, fc.br.Buffered() >= frontBufSize)
		if n > 0 {
			if armed {
				// Back to the idle deadline: the client watch reads
				// under it while the request is served.
				fc.idleUntil = time.Now().Add(fc.f.idleTimeout)
				if err := fc.c.SetReadDeadline(fc.idleUntil); err != nil {
					return 0, err
				}
			}
			return n, nil
		}
		if !more {
			// Bare-LF line ends, or a head too large: net/http's.
			return 0, nil
		}
		if !armed {
			armed = true
			fc.idleUntil = time.Time{} // re-arm the idle deadline next time
			if err := fc.c.SetReadDeadline(time.Now().Add(fc.f.readHeaderTimeout)); err != nil {
				return 0, err
			}
		}
		if _, err := fc.br.Peek(fc.br.Buffered() + 1); err != nil {
			return 0, err
		}
	}
}

// handOff gives the connection, and whatever it has sent so far, to the
// fallback server.
func (fc *frontConn) handOff() bool {
	n := fc.br.Buffered()
	pre, _ := fc.br.Peek(n)
	pc := &prefixConn{Conn: fc.c, pre: append(append([]byte(nil), pre...), fc.cr.takePending()...)}
	// net/http arms its own deadlines; clear the front's.
	if fc.c.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	return fc.f.handoff.push(pc)
}

// parse reads head, a whole request head, into a request, or returns nil
// when the front does not serve it (see the top of this file).
func (fc *frontConn) parse(head []byte) *http.Request {
	// One string holds the whole head: the method, target and every
	// header key and value are substrings of it.
	s := string(head[:len(head)-2]) // keep the last field's CRLF
	line, rest, ok := wire.CutLine(s)
	if !ok {
		return nil
	}
	method, target, proto, ok := splitRequestLine(line)
	if !ok || proto != "HTTP/1.1" || (method != http.MethodGet && method != http.MethodHead) || !simpleTarget(target) {
		return nil
	}
	var f frontFields
	if !f.parse(rest) || f.hosts != 1 || !validHost(f.host) {
		return nil
	}
	u := &url.URL{Path: target}
	if i := indexByte(target, '?'); i >= 0 {
		u.Path, u.RawQuery = target[:i], target[i+1:]
		if u.RawQuery == "" {
			u.ForceQuery = true
		}
	}
	// A copy of the connection's template carries its context: one
	// allocation, where WithContext would take two.
	req := new(http.Request)
	*req = *fc.template
	req.Method = method
	req.URL = u
	req.Header = f.h
	req.Host = f.host
	req.RequestURI = target
	req.Close = f.closeAfter
	return req
}

// frontFields are the fields of a request head the front serves.
type frontFields struct {
	h          http.Header
	host       string
	hosts      int // Host fields seen
	closeAfter bool
}

// parse reads the field lines (each ending in CRLF) into f; false: the
// front does not serve the request (a field net/http should judge, a
// body, an upgrade, Expect, a coding it would have to handle).
func (f *frontFields) parse(rest string) bool {
	n := 0
	for i := 0; i < len(rest); i++ {
		if rest[i] == '\n' {
			n++
		}
	}
	f.h = make(http.Header, n)
	vals := make([]string, n)
	for rest != "" {
		field, r, ok := wire.CutLine(rest)
		if !ok {
			return false
		}
		rest = r
		k, v, ok := wire.SplitField(field)
		if !ok {
			return false
		}
		k = canonicalKey(k)
		switch k {
		case "Host":
			// As net/http does: Host is the request's, not a header.
			f.hosts++
			f.host = v
			continue
		case "Content-Length":
			if v != "0" {
				return false
			}
		case "Transfer-Encoding", "Upgrade", "Expect", "Http2-Settings", "Content-Encoding":
			return false
		case "Connection":
			f.closeAfter = f.closeAfter || wire.HasToken(v, "close")
			if wire.HasToken(v, "upgrade") {
				return false
			}
		}
		if old, dup := f.h[k]; dup {
			f.h[k] = append(old, v)
			continue
		}
		vals[0] = v
		f.h[k] = vals[:1:1]
		vals = vals[1:]
	}
	return true
}

func splitRequestLine(line string) (method, target, proto string, ok bool) {
	i := indexByte(line, ' ')
	if i <= 0 {
		return "", "", "", false
	}
	method, line = line[:i], line[i+1:]
	j := indexByte(line, ' ')
	if j <= 0 {
		return "", "", "", false
	}
	return method, line[:j], line[j+1:], true
}

// simpleTarget reports whether target is an origin-form request target
// whose path is made only of characters that need no decoding or escaping:
// then the path is the same decoded and escaped, and the front and net/http
// could not read it differently. The query may hold escapes too.
func simpleTarget(target string) bool {
	if len(target) == 0 || target[0] != '/' {
		return false
	}
	query := false
	for i := 0; i < len(target); i++ {
		c := target[i]
		// The query is passed on as it came, escapes and all.
		query = query || c == '?'
		if !pathByte[c] && !(query && (c == '%' || queryByte[c])) {
			return false
		}
	}
	return true
}

// pathByte: unreserved and sub-delims, ':', '@', '/', '?' (RFC 3986), but
// the sub-delims net/url escapes in a path by default (! ' ( ) *): a path
// with one keeps its RawPath in net/http, and is served there.
var pathByte = wire.AlnumAnd("-._~$&+,;=:@/?")

// queryByte: what a query may hold beyond pathByte (its escapes aside).
var queryByte = wire.AlnumAnd("!'()*")

// canonicalKey is textproto.CanonicalMIMEHeaderKey for a valid token,
// without an allocation when k is canonical already (nearly always).
func canonicalKey(k string) string {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return http.CanonicalHeaderKey(k)
		}
		upper = c == '-'
	}
	return k
}

// validHost accepts the host[:port] forms of names and IPv4 and bracketed
// IPv6 addresses; anything else is net/http's to judge.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func cutByte(s string, c byte) (before, after string, found bool) {
	if i := indexByte(s, c); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// connReader reads the client connection, first returning what a client
// watch read while a request was being served.
type connReader struct {
	c       net.Conn
	pending []byte
}

func (r *connReader) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.c.Read(p)
}

func (r *connReader) takePending() []byte {
	p := r.pending
	r.pending = nil
	return p
}

// clientWatch notices a client going away while its request is served: a
// request that waits on its upstream for longer than watchClientAfter (or
// streams an answer) reads the client connection in the background. End of
// stream or an error cancels the connection's context, and with it the
// upstream request; bytes (the next pipelined request) are kept for later.
// Quick requests never start it.
type clientWatch struct {
	// inUse: armed or started for the current request; only the
	// connection's goroutine touches it.
	inUse bool
	timer *time.Timer
	mu    sync.Mutex
	armed bool
	done  chan struct{} // closed when a started read has returned
}

// arm starts the watch after d (at once when d is 0), unless it is in use
// already or the client sent more already.
func (w *clientWatch) arm(fc *frontConn, d time.Duration) {
	if w.inUse || fc.br.Buffered() > 0 {
		return
	}
	w.inUse = true
	w.mu.Lock()
	w.armed = true
	w.done = nil
	w.mu.Unlock()
	if w.timer == nil {
		w.timer = time.AfterFunc(d, func() { w.run(fc) })
		return
	}
	w.timer.Reset(d)
}

func (w *clientWatch) run(fc *frontConn) {
	w.mu.Lock()
	if !w.armed || w.done != nil {
		// Stopped, or a late run of an earlier request's timer already
		// watches this one.
		w.mu.Unlock()
		return
	}
	done := make(chan struct{})
	w.done = done
	w.mu.Unlock()
	defer close(done)
	// The read deadline is still the idle one armed before the request.
	var buf [512]byte
	n, err := fc.c.Read(buf[:])
	if n > 0 {
		fc.cr.pending = append(fc.cr.pending, buf[:n]...)
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return // stop's doing, or a request longer than the idle timeout
	}
	fc.cancel() // the client is gone
	fc.waitMu.Lock()
	if d := fc.waiting; d != nil {
		_ = d.SetDeadline(aLongTimeAgo)
	}
	fc.waitMu.Unlock()
}

// deadliner is a connection whose blocked reads and writes a deadline can
// end.
type deadliner interface{ SetDeadline(time.Time) error }

// waitOn records what the request being served waits on (nil: nothing),
// for the client watch to abort if the client goes away.
func (fc *frontConn) waitOn(d deadliner) {
	fc.waitMu.Lock()
	fc.waiting = d
	fc.waitMu.Unlock()
}

// aLongTimeAgo is a deadline in the past: it fails blocked reads and writes
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// stop ends the watch; a read in progress is cut short and waited for.
func (w *clientWatch) stop(fc *frontConn) {
	if !w.inUse {
		return
	}
	w.inUse = false
	w.timer.Stop()
	w.mu.Lock()
	w.armed = false
	done := w.done
	w.done = nil
	w.mu.Unlock()
	if done == nil {
		return // no read started; a run still to come sees armed false
	}
	_ = fc.c.SetReadDeadline(aLongTimeAgo)
	<-done
	fc.idleUntil = time.Time{} // the next request re-arms the deadline
}

// connQueue is a net.Listener whose connections are pushed to it: the
// front's hand-offs to net/http.
type connQueue struct {
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	addr   net.Addr
	closed atomic.Bool
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) close() { q.once.Do(func() { close(q.done) }) }

func (q *connQueue) Close() error { q.close(); return nil }

func (q *connQueue) Addr() net.Addr {
	if q.addr == nil {
		return &net.TCPAddr{}
	}
	return q.addr
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes a TCP connection, which net/http does before
// closing one with unread input (after a 431, say), so that the client reads
// the answer instead of a reset.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
