package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// Client is the gateway's one upstream client: it sends every request,
// whatever its method, body or upgrade, over one pool of HTTP/1.1
// connections per upstream address, reading the answer in the calling
// goroutine. http.Transport hands every request to a writer goroutine and
// every answer back from a reader goroutine per connection; on a proxy that
// does little else, those handoffs are a large share of the CPU per
// request. Here only a request body gets a goroutine (bodyWriter).
//
// One header timeout: the connection's deadline, the request's own
// (HeaderTimeoutKey) or Config.HeaderTimeout, armed from the request's end.
// One stale-connection rule: an idle connection that received anything is
// closed when it is taken from the pool (Conn.stale), and an idempotent
// request that fails on a reused connection before any byte of an answer
// came back (the upstream closed its idle end as the request went out) is
// sent once more on a new one, its body from GetBody.
//
// A connection is reused once its answer was read to the end without error,
// its body (if any) was written whole, the upstream did not ask to close it,
// and the request's context was not cancelled meanwhile; otherwise it is
// closed.
type Client struct {
	dialer        *dialer
	headerTimeout time.Duration // 0: none
	maxIdle       int           // idle connections kept per upstream address
	idleTimeout   time.Duration // an idle connection older than this is closed

	// pools maps an upstream to its idle connections, copy on write.
	pools atomic.Pointer[map[poolKey]*connPool]
	mu    sync.Mutex // serialises writers of pools, and the sweep timer
	sweep *time.Timer
	// closed is set by CloseIdleConnections at shutdown: connections are
	// no longer kept.
	closed atomic.Bool
}

var _ http.RoundTripper = (*Client)(nil)

// Config is what a Client is built with.
type Config struct {
	DialTimeout    time.Duration
	HeaderTimeout  time.Duration // the default response-header timeout; 0: none
	MaxIdlePerHost int           // idle connections kept per upstream address
	// TLS is the client configuration for upstreams that serve TLS (the
	// cluster CA, the node's certificate); nil: they cannot be reached.
	TLS *tls.Config
}

// Timing that is not worth a Config field.
const (
	idleConnTimeout = 90 * time.Second
	keepAlive       = 30 * time.Second
)

// New builds a Client; it starts nothing.
func New(cfg Config) *Client {
	return &Client{
		dialer:        newDialer(cfg),
		headerTimeout: cfg.HeaderTimeout,
		maxIdle:       cfg.MaxIdlePerHost,
		idleTimeout:   idleConnTimeout,
	}
}

// HeaderTimeoutKey is the context key under which a request carries its
// own response-header timeout: a value with a HeaderTimeout method (0 for
// the Client's).
type HeaderTimeoutKey struct{}

// headerTimeout is req's response-header timeout.
func (t *Client) timeoutOf(ctx context.Context) time.Duration {
	if v, ok := ctx.Value(HeaderTimeoutKey{}).(interface{ HeaderTimeout() time.Duration }); ok {
		if d := v.HeaderTimeout(); d > 0 {
			return d
		}
	}
	return t.headerTimeout
}

// poolKey names an upstream: its "address:port", and whether it is
// spoken to with TLS (api.Instance.TLS).
type poolKey struct {
	addr string
	tls  bool
}

// connPool holds idle connections to one upstream.
type connPool struct {
	idle   chan *Conn
	used   atomic.Int64 // unix nanoseconds of the last get
	closed *atomic.Bool // the transport's: keep no connection
}

// Conn is one upstream connection with its buffers.
type Conn struct {
	net.Conn
	R         *bufio.Reader // the answers, read through it
	W         *bufio.Writer // the requests, written through it
	pool      *connPool
	idleSince atomic.Int64 // unix nanoseconds, set when it goes idle
	// raw and peek look at the socket for stale (made once per
	// connection: a peek per reuse allocates nothing).
	raw     syscall.RawConn // nil: not a socket
	peek    func(fd uintptr) bool
	peeked  bool // peek's result: something arrived
	peekBuf [1]byte
	// writer writes the body of the request in progress, nil when it has
	// none; mu hands the header deadline over between it and the reader.
	writer *bodyWriter
	mu     sync.Mutex
	headOK bool // the answer's head is in: the writer arms no deadline
}

// newConn wraps a new connection to an upstream.
func newConn(c net.Conn, p *connPool) *Conn {
	pc := &Conn{Conn: c, R: bufio.NewReaderSize(c, 4<<10), W: bufio.NewWriterSize(c, 4<<10), pool: p}
	if tc, ok := c.(*tls.Conn); ok {
		// Any TLS record arriving on an idle connection is one too many
		// (Go's servers send their session tickets before any answer).
		c = tc.NetConn()
	}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			pc.raw = raw
			pc.peek = func(fd uintptr) bool {
				n, _, err := syscall.Recvfrom(int(fd), pc.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
				// n > 0: stray bytes; n == 0 with no error: the upstream
				// closed; EAGAIN: nothing there, as it should be.
				pc.peeked = n > 0 || err == nil || err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
				return true
			}
		}
	}
	return pc
}

// RoundTrip sends req and returns the upstream's answer, whose body reads
// straight from the connection. The header timeout is the route's (a
// service's own, meta herd.response-header-timeout) or the transport's.
func (t *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return nil, fmt.Errorf("gateway: unsupported upstream scheme %q", req.URL.Scheme)
	}
	ctx := req.Context()
	timeout := t.timeoutOf(ctx)
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.Get(ctx, req.URL.Host, req.URL.Scheme == "https")
		if err != nil {
			return nil, err
		}
		resp, answered, err := pc.roundTrip(ctx, req, timeout)
		if err == nil {
			return resp, nil
		}
		pc.Close()
		var body *bodyFailure
		if errors.As(err, &body) {
			return nil, body.err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if reused && !answered && attempt == 0 && ClosedByPeer(err) && wire.Idempotent(req) {
			// The upstream had closed its idle end as the request went
			// out: once more, on a new connection, when the body can be
			// sent again. (Not a request that may not be applied twice:
			// an upstream that crashed on it looks the same. Closes found
			// before sending, by stale, cost nothing.)
			if again, ok := rewound(req); ok {
				req = again
				continue
			}
		}
		return nil, err
	}
}

// rewound is req with its body from the start (GetBody), ready to be sent
// again; false when its body cannot be.
func rewound(req *http.Request) (*http.Request, bool) {
	if !HasBody(req) {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	again := *req
	again.Body = body
	return &again, true
}

// HasBody reports whether req has a body to send.
func HasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
}

// ClosedByPeer reports whether err says the other end closed the
// connection (not a timeout: an upstream that does not answer on a reused
// connection would not answer on a new one either).
func ClosedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Stopped is the stop function of an exchange whose context cannot be
// cancelled: it reports that nothing was undone.
func Stopped() bool { return true }

// Past is a deadline in the past: it fails blocked reads and writes at
// once.
var Past = time.Unix(1, 0)

// roundTrip writes req and reads the answer's header. answered says whether
// any of the answer came back (if not, the request may not have reached the
// upstream at all). A body is written by a goroutine of its own (see
// bodyWriter), while the answer is awaited: an upstream may answer before
// it has read the whole body.
func (pc *Conn) roundTrip(ctx context.Context, req *http.Request, headerTimeout time.Duration) (resp *http.Response, answered bool, err error) {
	body := HasBody(req)
	var deadline time.Time
	if headerTimeout > 0 && !body {
		// Covers the write too: an upstream that does not read is as stuck
		// as one that does not answer. (With a body, the timeout runs from
		// its end, as http.Transport's does: an upload may take long.)
		deadline = time.Now().Add(headerTimeout)
	}
	if err := pc.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	stop := Stopped
	if ctx.Done() != nil {
		// The client going away aborts whatever the connection is doing;
		// the connection is then closed, never reused.
		stop = context.AfterFunc(ctx, func() { _ = pc.SetDeadline(Past) })
	}
	writeRequest(pc.W, req)
	if body {
		pc.writer = startBody(pc, req, headerTimeout)
	} else if err := pc.W.Flush(); err != nil {
		stop()
		return nil, false, err
	}
	resp, answered, err = pc.AwaitResponse(ctx, req, headerTimeout > 0, stop)
	if err != nil && pc.writer != nil {
		if ctx.Err() != nil {
			pc.writer.wait()
		}
		if berr := pc.writer.readFailure(); berr != nil {
			err = &bodyFailure{berr} // the client's body failed, not the upstream
		}
	}
	return resp, answered, err
}

// bodyFailure is an exchange that failed because the client's body did.
type bodyFailure struct{ err error }

func (e *bodyFailure) Error() string { return e.err.Error() }
func (e *bodyFailure) Unwrap() error { return e.err }

// AwaitResponse reads the answer to req, sent on pc, up to its header.
// deadline says whether a header deadline is armed on pc, to be cleared
// once the header is in; stop undoes the abort on ctx (see roundTrip) and
// reports whether it was in time. On success the answer's body owns pc.
func (pc *Conn) AwaitResponse(ctx context.Context, req *http.Request, deadline bool, stop func() bool) (resp *http.Response, answered bool, err error) {
	for {
		if _, err := pc.R.Peek(1); err != nil {
			stop()
			return nil, false, err
		}
		resp, err = http.ReadResponse(pc.R, req)
		if err != nil {
			stop()
			return nil, true, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx: passed on to whoever asked (a ClientTrace's
		// Got1xxResponse; the gateway does not), then the real answer
		// follows.
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				stop()
				return nil, true, err
			}
		}
	}
	tunnel := resp.StatusCode == http.StatusSwitchingProtocols
	if err := pc.headIn(deadline && (tunnel || !buffered(resp, pc.R))); err != nil {
		stop()
		return nil, true, err
	}
	if ctx.Err() != nil {
		// Cancelled while the deadline was being cleared: the abort may
		// have been undone.
		stop()
		return nil, true, ctx.Err()
	}
	if tunnel {
		// The connection is the tunnel's now (tunnel.go), which watches
		// the context itself.
		stop()
		resp.Body = &switched{pc: pc}
		return resp, true, nil
	}
	// A connection that carried an upgrade request stays with it.
	_, upgrade := req.Header["Upgrade"]
	keep := !resp.Close && !req.Close && !upgrade
	if resp.Body == http.NoBody {
		pc.Release(stop, keep)
		return resp, true, nil
	}
	resp.Body = &answerBody{rc: resp.Body, pc: pc, stop: stop, keep: keep}
	return resp, true, nil
}

// buffered reports whether resp's whole body is already in br.
func buffered(resp *http.Response, br *bufio.Reader) bool {
	if resp.Body == http.NoBody {
		return true
	}
	return resp.ContentLength >= 0 && len(resp.TransferEncoding) == 0 && int64(br.Buffered()) >= resp.ContentLength
}

// writeRequest writes req's request line and header to bw as
// Request.Write would, minus its generality (no sorting of the header);
// the body, if any, is bodyWriter's. Values are the inbound
// request's, which the server has validated; line breaks are still
// replaced, as Request.Write does.
func writeRequest(bw *bufio.Writer, req *http.Request) {
	u := req.URL
	path, host := u.EscapedPath(), req.Host
	if path == "" {
		path = "/"
	}
	if host == "" {
		host = u.Host
	}
	wire.WriteRequestLine(bw, req.Method, path, u.ForceQuery, u.RawQuery, host)
	ua, hasUA := req.Header["User-Agent"]
	switch {
	case !hasUA:
		bw.WriteString("User-Agent: Go-http-client/1.1\r\n")
	case len(ua) > 0 && ua[0] != "":
		wire.WriteField(bw, "User-Agent", ua[0])
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	writeFraming(bw, req)
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vv {
			wire.WriteField(bw, k, v)
		}
	}
	bw.WriteString("\r\n")
}

// Close closes the connection, and first fails the read of a client's
// body that its writer may be waiting on: the exchange is over.
func (pc *Conn) Close() error {
	if w := pc.writer; w != nil {
		w.abortBody()
	}
	return pc.Conn.Close()
}

// stale reports whether the idle connection received anything since its
// last answer ended: bytes the upstream sent past that end (which the next
// request would read as its answer: response-queue poisoning), or its
// close. One non-blocking peek at the socket, no goroutine per idle
// connection (http.Transport keeps a reader on each for this).
func (pc *Conn) stale() bool {
	if pc.R.Buffered() > 0 {
		return true
	}
	if pc.raw == nil {
		return false
	}
	if err := pc.raw.Read(pc.peek); err != nil {
		return true
	}
	return pc.peeked
}

// Release hands the connection back to its pool when its exchange finished
// cleanly and may be followed by another, and closes it otherwise.
func (pc *Conn) Release(stop func() bool, keep bool) {
	if w := pc.writer; w != nil && !(keep && w.finishedWithin(writerGrace)) {
		// The answer came before the whole body was written (or the
		// write failed): the connection carries no more requests, and
		// the client's body is read no further (Close).
		keep = false
	} else {
		pc.writer = nil
	}
	// Bytes past the end of the answer mean the upstream and the gateway
	// disagree on where it ended: the connection cannot carry another.
	if !stop() || !keep || pc.pool.closed.Load() || pc.R.Buffered() > 0 {
		// stop false: the context was cancelled and the deadline is
		// (or is about to be) in the past.
		pc.Close()
		return
	}
	pc.idleSince.Store(time.Now().UnixNano())
	select {
	case pc.pool.idle <- pc:
	default:
		pc.Close() // the pool is full
	}
}

// answerBody is an answer's body read from a Conn. Reading it to the end
// releases the connection; closing it earlier closes the connection, since
// the rest of the answer would have to be read first (a stream may never
// end).
type answerBody struct {
	rc   io.ReadCloser
	pc   *Conn
	stop func() bool
	keep bool

	mu       sync.Mutex // Close may come from another goroutine than Read
	released bool
}

func (b *answerBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.released {
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.released = true
		b.pc.Release(b.stop, b.keep)
	} else if err != nil {
		b.released = true
		b.stop()
		b.pc.Close()
	}
	return n, err
}

func (b *answerBody) Close() error {
	// An unfinished body: fail a Read blocked in another goroutine before
	// taking the lock it holds.
	if !b.tryRelease() {
		return nil
	}
	b.stop()
	return b.pc.Close()
}

// tryRelease marks the body released, closing the connection first when a
// Read may be blocked on it; it reports whether the body was still held.
func (b *answerBody) tryRelease() bool {
	if b.mu.TryLock() {
		defer b.mu.Unlock()
		if b.released {
			return false
		}
		b.released = true
		return true
	}
	// A Read is in progress: unblock it, then wait for it.
	_ = b.pc.SetDeadline(Past)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.released {
		return false
	}
	b.released = true
	return true
}

var errBodyClosed = errors.New("gateway: read on a closed upstream body")

// switched is the connection of an answer 101, as its body: bytes both
// ways (what the upstream sent past its head first), never reused.
type switched struct{ pc *Conn }

func (s *switched) Read(p []byte) (int, error)  { return s.pc.R.Read(p) }
func (s *switched) Write(p []byte) (int, error) { return s.pc.Conn.Write(p) }
func (s *switched) Close() error                { return s.pc.Close() }

// CloseWrite half-closes the connection (TCP or TLS).
func (s *switched) CloseWrite() error {
	if cw, ok := s.pc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("gateway: the upstream connection cannot be half-closed")
}

// Get returns an idle connection to addr (with TLS when secure), or a new
// one; reused says which.
func (t *Client) Get(ctx context.Context, addr string, secure bool) (pc *Conn, reused bool, err error) {
	p := t.pool(poolKey{addr, secure})
	now := time.Now().UnixNano()
	if now-p.used.Load() > int64(time.Second) {
		p.used.Store(now) // coarse: the sweep only needs minutes
	}
	for {
		select {
		case pc := <-p.idle:
			if now-pc.idleSince.Load() > int64(t.idleTimeout) || pc.stale() {
				pc.Close()
				continue
			}
			return pc, true, nil
		default:
		}
		break
	}
	dial := t.dialer.dial
	if secure {
		dial = t.dialer.dialTLS
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return newConn(c, p), false, nil
}

// pool returns key's pool, creating it (and arming the sweep of idle
// connections).
func (t *Client) pool(key poolKey) *connPool {
	if m := t.pools.Load(); m != nil {
		if p, ok := (*m)[key]; ok {
			return p
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.pools.Load()
	if old != nil {
		if p, ok := (*old)[key]; ok {
			return p
		}
	}
	n := 0
	if old != nil {
		n = len(*old)
	}
	m := make(map[poolKey]*connPool, 1+n)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	p := &connPool{idle: make(chan *Conn, max(t.maxIdle, 1)), closed: &t.closed}
	p.used.Store(time.Now().UnixNano())
	m[key] = p
	t.pools.Store(&m)
	if t.sweep == nil && !t.closed.Load() {
		t.sweep = time.AfterFunc(t.idleTimeout, t.sweepIdle)
	}
	return p
}

// sweepIdle closes the connections idle for longer than idleTimeout and
// forgets the pools left empty and unused for as long (instances come and
// go with new addresses), then runs again while any pool remains. A
// request still holding a connection of a forgotten pool puts it back
// there, where nobody takes it: the pool and its connection are then
// garbage, and the runtime closes such a connection's socket.
func (t *Client) sweepIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.pools.Load()
	if old == nil || t.closed.Load() {
		t.sweep = nil
		return
	}
	now := time.Now().UnixNano()
	m := make(map[poolKey]*connPool, len(*old))
	for key, p := range *old {
		for range len(p.idle) {
			var pc *Conn
			select {
			case pc = <-p.idle:
			default:
			}
			if pc == nil {
				break
			}
			if now-pc.idleSince.Load() > int64(t.idleTimeout) {
				pc.Close()
				continue
			}
			select {
			case p.idle <- pc:
			default:
				pc.Close()
			}
		}
		if len(p.idle) > 0 || now-p.used.Load() <= int64(t.idleTimeout) {
			m[key] = p
		}
	}
	t.pools.Store(&m)
	if len(m) == 0 {
		t.sweep = nil
		return
	}
	t.sweep.Reset(t.idleTimeout)
}

// CloseIdleConnections closes every idle connection and keeps none from
// now on (the gateway is shutting down).
func (t *Client) CloseIdleConnections() {
	t.closed.Store(true)
	t.mu.Lock()
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	if m := t.pools.Load(); m != nil {
		for _, p := range *m {
			for {
				select {
				case pc := <-p.idle:
					pc.Close()
					continue
				default:
				}
				break
			}
		}
	}
}
