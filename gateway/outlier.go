package gateway

import (
	"math"
	"math/rand/v2"

	"github.com/herdcluster/herd/api"
	"sync/atomic"
	"time"
)

// Passive outlier detection: each gateway watches the outcome of its own
// requests. An instance that fails ejectAfter times in a row (connection
// errors, timeouts, 502/503/504) is ejected for ejectBase, doubling with
// each ejection up to ejectMax, with up to 10% jitter so that gateways do
// not bring it back in step. At most half of a service's instances are
// ejected at once. When its time is up the instance is on probation: it
// comes back through a single probe request (the next request that could
// go to it; others keep avoiding it meanwhile). A successful probe clears
// its record; a failed one ejects it anew, for longer.
const (
	ejectAfter = 3
	ejectBase  = 10 * time.Second
	ejectMax   = 5 * time.Minute
)

// Limits on the request path.
const (
	// maxRequestBody is the largest request body the gateway forwards.
	maxRequestBody = 10 << 20
	// maxInflightPerInstance caps the requests this gateway has in flight
	// to one instance; past it, requests go elsewhere or fail fast.
	maxInflightPerInstance = 1024
)

// Peak-EWMA latency estimate: a slower sample replaces the estimate at
// once (peak), a faster one pulls it down with decay ewmaTau; an estimate
// older than ewmaRefresh makes the instance worth one request to refresh it.
const (
	ewmaTau     = 600 * time.Millisecond
	ewmaRefresh = 5 * time.Second
)

// health is one instance's record, updated lock-free on the request path.
type health struct {
	inflight atomic.Int64
	// ewma is the latency estimate in nanoseconds (float64 bits); at is
	// when it was last updated (unix nanoseconds, 0 never).
	ewma         atomic.Uint64
	at           atomic.Int64
	consecutive  atomic.Int32
	ejections    atomic.Int32
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when never ejected
	// probeAt is when the probe of an instance on probation was sent (unix
	// nanoseconds), 0 when none is out.
	probeAt atomic.Int64
}

func (h *health) ejected(now int64) bool { return h.ejectedUntil.Load() > now }

// probeTimeout frees the probe slot of a probe that never reported (its
// client went away): the next request probes again.
const probeTimeout = 30 * time.Second

// onProbation: the ejection is over, but no request has succeeded since.
func (h *health) onProbation(now int64) bool {
	return h.ejections.Load() != 0 && !h.ejected(now)
}

// probe reports whether a request may go to the instance now: always, but
// on probation only as the one probe, which it claims.
func (h *health) probe(now int64) (allowed, claimed bool) {
	if !h.onProbation(now) {
		return true, false
	}
	at := h.probeAt.Load()
	if at != 0 && now-at < int64(probeTimeout) {
		return false, false // a probe is out: wait for its outcome
	}
	return h.probeAt.CompareAndSwap(at, now), true
}

// healthIfAny returns the record of hostport, nil when there is none.
func (st *serviceState) healthIfAny(hostport string) *health {
	m := st.health.Load()
	if m == nil {
		return nil
	}
	return (*m)[hostport]
}

// begin counts an attempt to the instance at hostport, sent at sent, as in
// flight. Every attempt, on every path, goes through begin and the end it
// returns, once: in-flight counts (saturation, least-requests) and latency
// estimates (peak EWMA, the hedge delay's p95) are kept here only.
func (st *serviceState) begin(hostport string, sent time.Time) attemptMark {
	h := st.healthOf(hostport)
	h.inflight.Add(1)
	return attemptMark{st: st, h: h, sent: sent}
}

// attemptMark is an attempt counted in flight by begin.
type attemptMark struct {
	st   *serviceState
	h    *health
	sent time.Time
}

// end counts the attempt out; answered: its answer's head came back, and
// the time it took feeds the instance's and the service's latency.
func (m attemptMark) end(answered bool) {
	m.h.inflight.Add(-1)
	if answered {
		d := time.Since(m.sent)
		m.h.observe(d, m.sent.UnixNano())
		m.st.latency.observe(d)
	}
}

// healthOf returns the record of the instance at hostport, creating it.
// Copy-on-write like hostport: concurrent first reports may each store a
// map and lose the other's new entry, which only costs one record.
func (st *serviceState) healthOf(hostport string) *health {
	old := st.health.Load()
	if old != nil {
		if h, ok := (*old)[hostport]; ok {
			return h
		}
	}
	m := make(map[string]*health, 1+lenOf(old))
	if old != nil {
		full := len(*old) >= maxCachedHosts
		now := time.Now().UnixNano()
		for k, v := range *old {
			// Past the bound, only records that still matter are kept
			// (instances come and go with new ports): an ejection, a
			// request in flight, or a recent latency estimate.
			if !full || v.active(now) {
				m[k] = v
			}
		}
	}
	h := &health{}
	m[hostport] = h
	st.health.Store(&m)
	return h
}

// active reports whether the record holds state worth keeping.
func (h *health) active(now int64) bool {
	return h.ejected(now) || h.inflight.Load() > 0 || (h.at.Load() != 0 && now-h.at.Load() < int64(time.Minute))
}

// report records the outcome of a request to hostport. instances is the
// service's instance count, for the 50% cap. It returns true when this
// failure ejected the instance.
func (st *serviceState) report(hostport string, failed bool, instances int) bool {
	h := st.healthOf(hostport)
	if !failed {
		if h.consecutive.Load() != 0 {
			h.consecutive.Store(0)
		}
		if h.ejections.Load() != 0 && !h.ejected(time.Now().UnixNano()) {
			h.ejections.Store(0) // the probe succeeded: back for good
			h.probeAt.Store(0)
		}
		return false
	}
	now := time.Now().UnixNano()
	probation := h.onProbation(now)
	n := h.consecutive.Add(1)
	if (n < ejectAfter && !probation) || h.ejected(now) {
		return false
	}
	// Check and eject under the service's lock (failures only, never the
	// success path), so two concurrent failures cannot both pass the cap.
	st.ejectMu.Lock()
	defer st.ejectMu.Unlock()
	if h.ejected(now) {
		return false
	}
	if st.ejectedCount(now)+1 > instances/2 {
		return false // never eject more than half of the service
	}
	k := h.ejections.Add(1)
	d := ejectBase << min(k-1, 10)
	if d > ejectMax || d <= 0 {
		d = ejectMax
	}
	d += time.Duration(rand.Int64N(int64(d)/10 + 1))
	h.ejectedUntil.Store(now + int64(d))
	h.consecutive.Store(0)
	h.probeAt.Store(0)
	return true
}

func (st *serviceState) ejectedCount(now int64) int {
	m := st.health.Load()
	if m == nil {
		return 0
	}
	k := 0
	for _, h := range *m {
		if h.ejected(now) {
			k++
		}
	}
	return k
}

// saturated returns the "address:port" of the instances of insts that have
// maxInflightPerInstance requests in flight.
func (st *serviceState) saturated(insts []api.Instance) []string {
	m := st.health.Load()
	if m == nil {
		return nil
	}
	var out []string
	for i := range insts {
		hp := st.hostport(&insts[i])
		if h, ok := (*m)[hp]; ok && h.inflight.Load() >= maxInflightPerInstance {
			out = append(out, hp)
		}
	}
	return out
}

func nowNano() int64 { return time.Now().UnixNano() }

// observe folds a latency sample into the estimate. Concurrent updates may
// lose one another's sample; the estimate stays sound.
func (h *health) observe(d time.Duration, now int64) {
	sample := float64(d)
	prev := math.Float64frombits(h.ewma.Load())
	last := h.at.Load()
	next := sample
	if last != 0 && sample < prev {
		w := math.Exp(-float64(now-last) / float64(ewmaTau))
		next = prev*w + sample*(1-w)
	}
	h.ewma.Store(math.Float64bits(next))
	h.at.Store(now)
}

// stale reports whether the estimate is missing or old and no request is
// on its way to refresh it (a hung instance must not draw every request).
func (h *health) stale(now int64) bool {
	at := h.at.Load()
	return (at == 0 || now-at > int64(ewmaRefresh)) && h.inflight.Load() == 0
}

// unproven reports whether the instance has not answered lately (no
// estimate, or an old one): a request to it may hang, nobody knows.
func (h *health) unproven(now int64) bool {
	at := h.at.Load()
	return at == 0 || now-at > int64(ewmaRefresh)
}

// cost is the estimate times the requests in flight plus the new one.
//
// An idle instance's estimate decays for the time since it was last updated,
// so one that lost the draw for a while becomes worth trying again. While
// requests are in flight it does not: silence from a busy instance is no
// sign that it got faster, and a hung instance whose estimate decayed would
// win every draw. Requests in flight with no estimate yet (a new instance
// whose first answers are still out) cost noEstimateCost each, not zero.
func (h *health) cost(now int64) float64 {
	inflight := h.inflight.Load()
	at := h.at.Load()
	if at == 0 {
		if inflight == 0 {
			return 0
		}
		return noEstimateCost * float64(inflight+1)
	}
	e := math.Float64frombits(h.ewma.Load())
	if inflight == 0 && now > at {
		e *= math.Exp(-float64(now-at) / float64(ewmaTau))
	}
	return e * float64(inflight+1)
}

// noEstimateCost is the latency assumed, per request in flight, for an
// instance that has not answered yet: high enough that instances with an
// estimate are preferred, and growing with the requests piled onto it.
const noEstimateCost = float64(time.Second)

// hedgeCost is cost for choosing where a hedge or retry goes: an instance
// that has never answered costs as one whose first answers are still out,
// not nothing.
func (h *health) hedgeCost(now int64) float64 {
	if h.at.Load() == 0 {
		return noEstimateCost * float64(h.inflight.Load()+1)
	}
	return h.cost(now)
}
