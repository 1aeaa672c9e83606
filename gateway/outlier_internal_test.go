package gateway

import (
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

type allAlive struct{}

func (allAlive) NodeStatus(string) string { return api.StatusAlive }

// An ejected instance comes back through a single probe: while the probe
// is out no other request goes to it; a failed probe ejects it again for
// longer, a successful one brings it back for good, and a probe that never
// reports frees its slot after probeTimeout.
func TestEjectionProbe(t *testing.T) {
	st := &serviceState{}
	insts := []api.Instance{
		{ID: "a", Node: "na", Address: "10.0.0.1", Port: 1},
		{ID: "b", Node: "nb", Address: "10.0.0.2", Port: 1},
		{ID: "c", Node: "nc", Address: "10.0.0.3", Port: 1},
	}
	a := st.hostport(&insts[0])
	picks := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[choose(selRoundRobin, st, allAlive{}, insts).ID]++
		}
		return got
	}
	for range ejectAfter {
		st.report(a, true, len(insts))
	}
	h := st.healthIfAny(a)
	if h == nil || !h.ejected(time.Now().UnixNano()) {
		t.Fatal("3 failures in a row did not eject the instance")
	}
	if got := picks(50); got["a"] != 0 {
		t.Fatalf("an ejected instance got %d of 50 requests", got["a"])
	}
	expire := func() { h.ejectedUntil.Store(time.Now().UnixNano() - 1) }

	expire()
	if got := choose(selRoundRobin, st, allAlive{}, insts); got.ID != "a" {
		t.Fatalf("the first request after the ejection went to %s, want the probe to a", got.ID)
	}
	if got := picks(50); got["a"] != 0 {
		t.Fatalf("with the probe out, a got %d more requests", got["a"])
	}
	st.report(a, true, len(insts)) // the probe fails
	if !h.ejected(time.Now().UnixNano()) || h.ejections.Load() != 2 {
		t.Fatalf("a failed probe: ejected %v, ejections %d; want ejected again, 2", h.ejected(time.Now().UnixNano()), h.ejections.Load())
	}
	if d := time.Duration(h.ejectedUntil.Load() - time.Now().UnixNano()); d < 2*ejectBase-time.Second {
		t.Fatalf("the second ejection lasts %s, want about %s", d, 2*ejectBase)
	}

	expire()
	if got := choose(selRoundRobin, st, allAlive{}, insts); got.ID != "a" {
		t.Fatalf("second probe went to %s", got.ID)
	}
	// The probe's client went away: no report. The slot frees itself.
	h.probeAt.Store(time.Now().UnixNano() - int64(probeTimeout) - 1)
	if got := choose(selRoundRobin, st, allAlive{}, insts); got.ID != "a" {
		t.Fatalf("after a probe that never reported, the next probe went to %s", got.ID)
	}
	st.report(a, false, len(insts)) // the probe succeeds
	if h.ejections.Load() != 0 || h.ejected(time.Now().UnixNano()) {
		t.Fatalf("a successful probe left ejections %d", h.ejections.Load())
	}
	if got := picks(60); got["a"] < 15 {
		t.Fatalf("back after a good probe, a got %d of 60 round-robin requests", got["a"])
	}
}
