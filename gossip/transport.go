package gossip

import (
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// observingTransport is memberlist's NetTransport with one addition: it
// reports the sender and time of every packet, which is how the view tells
// a silent (suspect) node from a talking one.
type observingTransport struct {
	*memberlist.NetTransport
	packets chan *memberlist.Packet
	heard   func(addr string, at time.Time)

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
		draining:     make(chan struct{}),
		stop:         make(chan struct{}),
	}
	t.wg.Add(1)
	go t.forward()
	return t
}

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
	})
	return err
}

var _ memberlist.Transport = (*observingTransport)(nil)
