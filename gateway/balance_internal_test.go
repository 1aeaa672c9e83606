package gateway

import (
	"math"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// p2c's choice between two instances, from their latency estimates, the
// age of those and the requests in flight.
func TestP2CCost(t *testing.T) {
	type rec struct {
		ewma     time.Duration // 0: no estimate yet
		age      time.Duration // since the estimate was last updated
		inflight int64
	}
	tests := []struct {
		name string
		a, b rec
		want string
	}{
		{"the faster wins", rec{ewma: 2 * time.Millisecond}, rec{ewma: time.Millisecond}, "b"},
		{"requests in flight count", rec{ewma: time.Millisecond, inflight: 3}, rec{ewma: 2 * time.Millisecond}, "b"},
		{"never asked: asked once", rec{ewma: time.Millisecond}, rec{}, "b"},
		{"not asked for a while: asked once", rec{ewma: time.Millisecond}, rec{ewma: 50 * time.Millisecond, age: 6 * time.Second}, "b"},
		{"an idle loser's estimate decays", rec{ewma: time.Millisecond}, rec{ewma: 3 * time.Millisecond, age: 2 * time.Second}, "b"},
		// A hung instance: its requests pile up and nothing comes back.
		{"first answers still out", rec{ewma: 5 * time.Millisecond}, rec{inflight: 1}, "a"},
		{"busy and silent: no decay", rec{ewma: 2 * time.Millisecond}, rec{ewma: time.Millisecond, age: 3 * time.Second, inflight: 3}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			insts := []api.Instance{{ID: "a", Address: "10.0.0.1", Port: 1}, {ID: "b", Address: "10.0.0.2", Port: 1}}
			// twoOf draws in random order: the answer must not depend on it.
			for range 20 {
				st := &serviceState{}
				now := time.Now().UnixNano()
				for i, r := range []rec{tt.a, tt.b} {
					h := st.healthOf(st.hostport(&insts[i]))
					h.inflight.Store(r.inflight)
					if r.ewma > 0 {
						h.ewma.Store(math.Float64bits(float64(r.ewma)))
						h.at.Store(now - int64(r.age))
					}
				}
				if got := insts[pickP2C(st, insts, []int{0, 1})].ID; got != tt.want {
					t.Fatalf("picked %s, want %s", got, tt.want)
				}
			}
		})
	}
}
