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

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func newObservingTransport(nt *memberlist.NetTransport, heard func(string, time.Time)) *observingTransport {
	t := &observingTransport{
		NetTransport: nt,
		packets:      make(chan *memberlist.Packet),
		heard:        heard,
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

// Shutdown implements memberlist.Transport.
func (t *observingTransport) Shutdown() error {
	t.stopOnce.Do(func() { close(t.stop) })
	err := t.NetTransport.Shutdown()
	t.wg.Wait()
	return err
}

var _ memberlist.Transport = (*observingTransport)(nil)
