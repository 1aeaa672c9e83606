package gossip

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// observingTransport is memberlist's NetTransport with two additions: it
// reports the sender and time of every packet, which is how the view tells
// a silent (suspect) node from a talking one; and it takes the TCP
// connections that open with a TLS record (the join exchange) away from
// memberlist, whose streams never start with that byte (nor with the join
// exchange's CA request), and hands them to
// the join listener. One port then serves both, and `--join ADDR` names
// where a new node asks to be admitted as well as where it gossips.
type observingTransport struct {
	*memberlist.NetTransport
	packets chan *memberlist.Packet
	heard   func(addr string, at time.Time)

	streams chan net.Conn
	joins   *joinListener
	// sniffing tracks the goroutines reading a new stream's first byte.
	sniffing sync.WaitGroup

	// draining is closed when Shutdown begins: packets are then read and
	// dropped, so the listeners never block on a full channel while
	// NetTransport.Shutdown waits for them.
	draining chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func newObservingTransport(nt *memberlist.NetTransport, heard func(string, time.Time)) *observingTransport {
	t := &observingTransport{
		NetTransport: nt,
		packets:      make(chan *memberlist.Packet),
		heard:        heard,
		streams:      make(chan net.Conn),
		draining:     make(chan struct{}),
		stop:         make(chan struct{}),
	}
	t.joins = newJoinListener(nt, t.draining)
	t.wg.Add(2)
	go t.forward()
	go t.forwardStreams()
	return t
}

// tlsRecordHandshake is the first byte of a TLS connection (a handshake
// record). memberlist's stream message types are small numbers, its label
// header 244: none is 22.
const tlsRecordHandshake = 0x16

// joinCARequest is the first byte of the join exchange's request for the
// cluster CA (secure.CARequest, "HERD-CA/1"): not a memberlist type either.
const joinCARequest = 'H'

// sniffTimeout bounds how long a new connection may take to send its first
// byte.
const sniffTimeout = 5 * time.Second

// forwardStreams hands each accepted connection to memberlist or to the
// join listener by its first byte. The sniff runs on its own goroutine, so a
// silent client holds up nobody else.
func (t *observingTransport) forwardStreams() {
	defer t.wg.Done()
	in := t.NetTransport.StreamCh()
	for {
		select {
		case c := <-in:
			select {
			case <-t.draining:
				c.Close()
				continue
			default:
			}
			t.sniffing.Add(1)
			go t.sniff(c)
		case <-t.stop:
			return
		case <-t.draining:
			// NetTransport.Shutdown waits for its accept loop, which may be
			// handing over a connection: take and close them until stop.
			for {
				select {
				case c := <-in:
					c.Close()
				case <-t.stop:
					return
				}
			}
		}
	}
}

func (t *observingTransport) sniff(c net.Conn) {
	defer t.sniffing.Done()
	br := bufio.NewReaderSize(c, 64)
	peeked := make(chan struct{})
	go func() {
		select {
		case <-t.draining: // Shutdown does not wait out a silent client
			c.Close()
		case <-peeked:
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	close(peeked)
	if err != nil {
		c.Close()
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	if first[0] == tlsRecordHandshake || first[0] == joinCARequest {
		t.joins.deliver(pc)
		return
	}
	select {
	case t.streams <- pc:
	case <-t.draining:
		c.Close()
	}
}

// StreamCh implements memberlist.Transport.
func (t *observingTransport) StreamCh() <-chan net.Conn { return t.streams }

// peekedConn replays the bytes read to sniff a connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// joinListener is a net.Listener of the connections that opened with TLS.
type joinListener struct {
	addr     net.Addr
	conns    chan net.Conn
	closed   chan struct{}
	draining <-chan struct{}
	once     sync.Once
	// serving is set by the first Accept.
	serving atomic.Bool
}

func newJoinListener(nt *memberlist.NetTransport, draining <-chan struct{}) *joinListener {
	ip, port, _ := nt.FinalAdvertiseAddr("", 0)
	return &joinListener{
		addr:     &net.TCPAddr{IP: ip, Port: port},
		conns:    make(chan net.Conn),
		closed:   make(chan struct{}),
		draining: draining,
	}
}

// deliver waits for an Accept; a connection nobody accepts in time (the
// join server is busy) is closed, and so at once is one that arrives before
// anybody serves joins (a node still forming its cluster), so the joiner
// retries soon.
func (l *joinListener) deliver(c net.Conn) {
	if !l.serving.Load() {
		c.Close()
		return
	}
	t := time.NewTimer(sniffTimeout)
	defer t.Stop()
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	case <-l.draining:
		c.Close()
	case <-t.C:
		c.Close()
	}
}

func (l *joinListener) Accept() (net.Conn, error) {
	l.serving.Store(true)
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.draining:
		return nil, net.ErrClosed
	}
}

func (l *joinListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *joinListener) Addr() net.Addr { return l.addr }

func (t *observingTransport) forward() {
	defer t.wg.Done()
	in := t.NetTransport.PacketCh()
	for {
		select {
		case p, ok := <-in:
			if !ok {
				return
			}
			t.heard(p.From.String(), p.Timestamp)
			select {
			case t.packets <- p:
			case <-t.draining:
			case <-t.stop:
				return
			}
		case <-t.stop:
			return
		}
	}
}

// PacketCh implements memberlist.Transport.
func (t *observingTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// Shutdown implements memberlist.Transport. memberlist stops reading
// packets before it calls this, and NetTransport.Shutdown waits for its
// listeners, which may be sending a packet: so packets are drained (and
// dropped) until the listeners are gone, and only then does forward stop.
func (t *observingTransport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
		close(t.draining)
		err = t.NetTransport.Shutdown()
		close(t.stop)
		t.wg.Wait()
		t.sniffing.Wait()
	})
	return err
}

var _ memberlist.Transport = (*observingTransport)(nil)
