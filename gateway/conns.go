package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// clientListener accepts the gateway's client connections below TLS: it
// caps them (MaxConns in total, MaxConnsPerIP from one address) and wraps
// each in a clientConn with the write timeout. A connection over a cap is
// answered 503 and closed in a goroutine of its own, so that a flood of
// them does not hold up the accept loop.
type clientListener struct {
	net.Listener
	g *Gateway

	mu    sync.Mutex
	total int
	byIP  map[netip.Addr]int
}

func newClientListener(ln net.Listener, g *Gateway) *clientListener {
	return &clientListener{Listener: ln, g: g, byIP: map[netip.Addr]int{}}
}

func (l *clientListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := addrIP(c.RemoteAddr())
		if why := l.acquire(ip); why != "" {
			l.g.rejected[rejectIndex(ReasonTooManyConns)].Add(1)
			go l.refuse(c, why)
			continue
		}
		return &clientConn{Conn: c, writeTimeout: l.g.cfg.ClientWriteTimeout, release: func() { l.release(ip) }}, nil
	}
}

// acquire counts a connection from ip in, or says which cap it is over.
func (l *clientListener) acquire(ip netip.Addr) (over string) {
	cfg := &l.g.cfg
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= cfg.MaxConns {
		return "the gateway has its maximum of " + strconv.Itoa(cfg.MaxConns) + " client connections"
	}
	if n := l.byIP[ip]; n >= cfg.MaxConnsPerIP && !l.g.trustedIP(ip) {
		return "this client address has its maximum of " + strconv.Itoa(cfg.MaxConnsPerIP) + " connections"
	}
	l.total++
	l.byIP[ip]++
	return ""
}

func (l *clientListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
}

// refuse answers a connection over a cap with a 503 and closes it, within
// a second (over TLS too: the client would not read a plaintext answer).
func (l *clientListener) refuse(c net.Conn, why string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if l.g.cfg.TLS != nil {
		c = tls.Server(c, l.g.cfg.TLS)
	}
	body := `{"error":"too many connections: ` + why + `; retry later","reason":"` + ReasonTooManyConns + `"}` + "\n"
	_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"+
		"Retry-After: 1\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

// addrIP is the IP of a connection's remote address.
func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// clientConn is one client connection: it leaves the listener's count when
// closed, and its writes time out only when the client stops reading.
type clientConn struct {
	net.Conn
	writeTimeout time.Duration
	release      func()
	closed       atomic.Bool
	// deadline is a write deadline set from outside (unix nanoseconds, 0
	// for none), which the write timeout does not extend.
	deadline atomic.Int64
	// armed is the write deadline Write set last (unix nanoseconds); it
	// is moved only once it is a second old, not at every write.
	armed atomic.Int64
}

// Write writes p, each part of it within writeTimeout (less up to a
// second: the deadline is moved once a second at most): a write that timed
// out having written some of p goes on with the rest, so a client that
// reads slowly but steadily is served, and one that stopped is cut off.
func (c *clientConn) Write(p []byte) (int, error) {
	written := 0
	for {
		now := time.Now().UnixNano()
		d := now + int64(c.writeTimeout)
		ext := c.deadline.Load()
		if ext != 0 && ext < d {
			d = ext
		}
		if a := c.armed.Load(); d-a > int64(time.Second) || d < a {
			if err := c.Conn.SetWriteDeadline(time.Unix(0, d)); err != nil {
				return written, err
			}
			c.armed.Store(d)
		}
		n, err := c.Conn.Write(p[written:])
		written += n
		if err == nil || n == 0 || !isTimeout(err) || ext != 0 && time.Now().UnixNano() >= ext {
			return written, err
		}
	}
}

func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *clientConn) SetDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *clientConn) setDeadline(t time.Time) {
	c.armed.Store(0) // the next Write arms its own again
	if t.IsZero() {
		c.deadline.Store(0)
	} else {
		c.deadline.Store(t.UnixNano())
	}
}

func (c *clientConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.release()
	}
	return c.Conn.Close()
}

// CloseWrite half-closes the TCP connection (see prefixConn.CloseWrite).
func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
