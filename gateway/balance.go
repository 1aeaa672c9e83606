package gateway

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
)

// selector is a balancing policy: it chooses which of the usable instances
// of a service gets the next request. cands holds indexes into insts (at
// least one); the result is one of cands. Every policy is safe for
// concurrent use, never blocks, takes no lock, and honours the instances'
// weights. It is a plain value with a switch rather than an interface, so
// that cands stays on the caller's stack.
type selector uint8

const (
	selRoundRobin selector = iota
	selP2C
	selLeastRequest
	selRandom
	// selHash: rendezvous hashing on a request key (a header or a cookie,
	// named by the service's meta herd.hash-on), for affinity.
	selHash
	// selHedge picks for retries and hedges: the instance least likely to
	// leave the request waiting (see hedgeCost). It moves no cursor.
	selHedge
)

func (s selector) pick(st *serviceState, insts []api.Instance, cands []int, key uint64) int {
	switch s {
	case selHash:
		return pickHash(insts, cands, key)
	case selP2C:
		return pickP2C(st, insts, cands)
	case selLeastRequest:
		return pickLeastRequest(st, insts, cands)
	case selRandom:
		return weightedRandom(insts, cands)
	case selHedge:
		return pickHedge(st, insts, cands)
	}
	return pickRoundRobin(st, insts, cands)
}

// weight is an instance's weight, at least 1.
func weight(in *api.Instance) int { return max(in.Weight, 1) }

// pickRoundRobin hands requests to the usable instances in turn, each as
// often as its weight says. When the set of usable instances changes the
// rotation simply continues over the new set.
func pickRoundRobin(st *serviceState, insts []api.Instance, cands []int) int {
	total := 0
	for _, i := range cands {
		total += weight(&insts[i])
	}
	k := int((st.next.Add(1) - 1) % uint64(total))
	for _, i := range cands {
		if k -= weight(&insts[i]); k < 0 {
			return i
		}
	}
	return cands[len(cands)-1]
}

// pickHash picks by rendezvous (highest random weight) hashing of key with
// each instance's ID: the same key goes to the same instance while it is
// usable, and only the keys of an instance that goes away move. Weights
// scale the scores. Without a key it falls back to random.
func pickHash(insts []api.Instance, cands []int, key uint64) int {
	if key == 0 {
		return weightedRandom(insts, cands)
	}
	best, bestScore := cands[0], -1.0
	for _, i := range cands {
		h := mix(key ^ stringHash(insts[i].ID))
		// Map to (0,1], then weight: -w/ln(u) keeps the weighted choice
		// consistent.
		u := (float64(h>>11) + 1) / (1 << 53)
		score := -float64(weight(&insts[i])) / math.Log(u)
		if score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// stringHash is FNV-1a.
func stringHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is splitmix64's finaliser.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// weightedRandom picks an instance at random, in proportion to its weight.
func weightedRandom(insts []api.Instance, cands []int) int {
	total := 0
	for _, i := range cands {
		total += weight(&insts[i])
	}
	k := rand.IntN(total)
	for _, i := range cands {
		if k -= weight(&insts[i]); k < 0 {
			return i
		}
	}
	return cands[len(cands)-1]
}

// pickLeastRequest picks, of two instances drawn at random by weight, the
// one with fewer requests in flight.
func pickLeastRequest(st *serviceState, insts []api.Instance, cands []int) int {
	a, b := twoOf(insts, cands)
	if a == b {
		return a
	}
	// The draw honours the weights; the comparison then is on load alone,
	// and a tie keeps the first draw.
	if st.healthOf(st.hostport(&insts[b])).inflight.Load() < st.healthOf(st.hostport(&insts[a])).inflight.Load() {
		return b
	}
	return a
}

// pickP2C: power of two choices, drawn by weight, over peak-EWMA latency
// times requests in flight. An instance whose estimate has not been
// refreshed for a while is picked once to refresh it.
func pickP2C(st *serviceState, insts []api.Instance, cands []int) int {
	a, b := twoOf(insts, cands)
	if a == b {
		return a
	}
	now := time.Now().UnixNano()
	ha, hb := st.healthOf(st.hostport(&insts[a])), st.healthOf(st.hostport(&insts[b]))
	if ha.stale(now) {
		return a
	}
	if hb.stale(now) {
		return b
	}
	if hb.cost(now) < ha.cost(now) {
		return b
	}
	return a
}

// pickHedge picks, of all the candidates, the one with the lowest
// hedgeCost per unit of weight; ties are broken at random. A hedge or retry
// is sent because an instance failed or hung: it must not land on another
// one that hangs (whose requests pile up in flight) or that has never
// answered, when an instance known to answer is there.
func pickHedge(st *serviceState, insts []api.Instance, cands []int) int {
	now := time.Now().UnixNano()
	best, bestCost, ties := cands[0], math.Inf(1), 0
	for _, i := range cands {
		c := st.healthOf(st.hostport(&insts[i])).hedgeCost(now) / float64(weight(&insts[i]))
		switch {
		case c < bestCost:
			best, bestCost, ties = i, c, 1
		case c == bestCost:
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

// twoOf draws two distinct candidates at random, by weight (the same one
// when there is only one).
func twoOf(insts []api.Instance, cands []int) (int, int) {
	if len(cands) == 1 {
		return cands[0], cands[0]
	}
	a := weightedRandom(insts, cands)
	for range 4 {
		if b := weightedRandom(insts, cands); b != a {
			return a, b
		}
	}
	for _, i := range cands { // heavily skewed weights: take any other
		if i != a {
			return a, i
		}
	}
	return a, a
}

// selectorFor returns the policy named name ("" means the default, p2c).
func selectorFor(name string) (selector, bool) {
	switch name {
	case "", BalancerP2C:
		return selP2C, true
	case BalancerRoundRobin:
		return selRoundRobin, true
	case BalancerRandom:
		return selRandom, true
	case BalancerLeastRequest:
		return selLeastRequest, true
	case BalancerHash:
		return selHash, true
	}
	return 0, false
}

// Balancing policies.
const (
	BalancerP2C          = "p2c"
	BalancerRoundRobin   = "round-robin"
	BalancerRandom       = "random"
	BalancerLeastRequest = "least-request"
	// BalancerHash is per service only: its instances' meta herd.hash-on
	// names the key ("header:X-User" or "cookie:session").
	BalancerHash = "hash"
)

// MetaResponseHeaderTimeout is the instance meta key with which a service
// sets its own response-header timeout (a Go duration such as "60s"),
// longer or shorter than the gateway's.
const MetaResponseHeaderTimeout = "herd.response-header-timeout"

// MetaHashOn is the instance meta key naming the hash key of the "hash"
// policy: "header:<name>" or "cookie:<name>".
const MetaHashOn = "herd.hash-on"

// MetaAllowTrace, set to "true" on a service's instances, lets TRACE
// requests through to it; the gateway answers them 405 otherwise.
const MetaAllowTrace = "herd.allow-trace"

// MetaBalancer is the instance meta key that chooses a service's policy
// (read from its first instance), overriding the gateway's.
const MetaBalancer = "herd.balancer"

// serviceState is the gateway's per-service state.
type serviceState struct {
	// next counts the requests routed to the service (round-robin cursor).
	next atomic.Uint64
	// hosts caches "address:port" of the service's instances, copy on
	// write, so the request path does not format it every time.
	hosts atomic.Pointer[map[hostKey]string]
	// health holds the passive outlier record of each instance, by
	// "address:port", copy on write.
	health atomic.Pointer[map[string]*health]
	// ejectMu serialises ejection decisions (the 50% cap).
	ejectMu sync.Mutex

	// Counters for metrics: answers by status class (index status/100,
	// 0 for anything else), retries, ejections, failed upstream exchanges.
	latency      latencyHist // time to the upstream's response headers, per attempt
	duration     latencyHist // whole requests: received to response body done
	hedges       atomic.Uint64
	hedgesCapped atomic.Uint64 // hedges not sent: over the hedge cap
	// hedgeSpent bounds hedges as a share of requests (hedge.go).
	hedgeSpent     atomic.Int64
	answers        [2][6]atomic.Uint64 // by method class (0 read, 1 write), then status class
	retries        atomic.Uint64
	ejections      atomic.Uint64
	upstreamErrors atomic.Uint64
}

// countAnswer records the status of an answer to the service.
func (st *serviceState) countAnswer(method string, status int) {
	c := status / 100
	if c < 1 || c > 5 {
		c = 0
	}
	st.answers[methodClass(method)][c].Add(1)
	st.earnHedge()
}

// methodClass is 0 for reads (GET, HEAD, OPTIONS) and 1 for the rest.
func methodClass(m string) int {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return 0
	}
	return 1
}

type hostKey struct {
	addr string
	port int
}

// maxCachedHosts bounds serviceState.hosts: instances come and go with new
// ports, and the cache must not grow with every one ever seen.
const maxCachedHosts = 256

// hostport returns inst's "address:port". Concurrent misses may each store
// a new map and lose the other's entry; that only costs a later miss.
func (st *serviceState) hostport(inst *api.Instance) string {
	k := hostKey{inst.Address, inst.Port}
	old := st.hosts.Load()
	if old != nil {
		if hp, ok := (*old)[k]; ok {
			return hp
		}
	}
	hp := net.JoinHostPort(inst.Address, strconv.Itoa(inst.Port))
	m := make(map[hostKey]string, 1+lenOf(old))
	if old != nil && len(*old) < maxCachedHosts {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[k] = hp
	st.hosts.Store(&m)
	return hp
}

// serviceStates maps service names to their state. Reads are a lock-free
// map lookup on an immutable snapshot; the first request to a service copies
// the map under mu. Entries are only created for services the catalog knows,
// so the map is bounded by the number of services ever registered.
type serviceStates struct {
	snap atomic.Pointer[map[string]*serviceState]
	mu   sync.Mutex // serialises writers only
}

func (s *serviceStates) get(service string) *serviceState {
	if m := s.snap.Load(); m != nil {
		if st, ok := (*m)[service]; ok {
			return st
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.snap.Load()
	if old != nil {
		if st, ok := (*old)[service]; ok {
			return st
		}
	}
	m := make(map[string]*serviceState, 1+lenOf(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	st := &serviceState{}
	m[service] = st
	s.snap.Store(&m)
	return st
}

func lenOf[K comparable, V any](m *map[K]V) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// Classes of an instance, from its health (the registry's, written by its
// node's checks), the gossip status of its node and the gateway's own
// outlier record; a class is used only when no better one has an instance.
const (
	classSkip    uint8 = iota // critical, in maintenance, dead or left, or already tried: never routed to
	classAlive                // passing, node alive or unknown to gossip
	classWarning              // warning, node alive: only when no passing instance is left
	classSuspect              // node suspect
	classEjected              // ejected by outlier detection: last resort
	numClasses
)

// classify is the class of in on a node of gossip status status, before
// outlier ejection.
func classify(in *api.Instance, status string) uint8 {
	if in.Maintenance != "" {
		return classSkip
	}
	switch in.Health {
	case api.HealthCritical:
		return classSkip
	}
	switch status {
	case api.StatusDead, api.StatusLeft:
		return classSkip
	case api.StatusSuspect:
		return classSuspect
	}
	// alive, "" (gossip has not heard of the node yet) and anything newer
	// than this code count as alive: refusing traffic on an unknown status
	// would turn a gossip hiccup into an outage.
	if in.Health == api.HealthWarning {
		return classWarning
	}
	return classAlive
}

// unroutable says how many of insts their health or maintenance keeps from
// traffic, for a 503's message ("" when none).
func unroutable(insts []api.Instance) string {
	critical, maint := 0, 0
	for i := range insts {
		switch {
		case insts[i].Maintenance != "":
			maint++
		case insts[i].Health == api.HealthCritical:
			critical++
		}
	}
	if critical+maint == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d critical, %d in maintenance)", critical, maint)
}

// choose picks the instance of insts that gets the request: passing
// instances on alive (or unknown) nodes first, warning ones next, those on
// suspect nodes only when no alive one is left, never critical ones, those
// in maintenance or those on dead or departed nodes. It returns nil when none is
// usable. It does not allocate for services of up to 64 instances.
func choose(sel selector, st *serviceState, live Liveness, insts []api.Instance) *api.Instance {
	return chooseExcept(sel, st, live, insts, nil, pickOpts{})
}

// pickOpts carries what some policies need beyond the instances.
type pickOpts struct {
	// key is the request's hash key for the hash policy, 0 when none.
	key uint64
	// local is this node's name when --prefer-local is on.
	local string
}

// chooseExcept is choose, skipping the instances whose "address:port" is in
// tried (a retry goes to another instance).
func chooseExcept(sel selector, st *serviceState, live Liveness, insts []api.Instance, tried []string, o pickOpts) *api.Instance {
	var buf [64]uint8
	classes := buf[:0]
	var count [numClasses]int
	now := time.Now().UnixNano()
	for i := range insts {
		c := classify(&insts[i], live.NodeStatus(insts[i].Node))
		if c != classSkip && (len(tried) > 0 || st.health.Load() != nil) {
			hp := st.hostport(&insts[i])
			if slices.Contains(tried, hp) {
				c = classSkip
			} else if h := st.healthIfAny(hp); (c == classAlive || c == classWarning) && h != nil && h.ejections.Load() != 0 {
				switch allowed, claimed := h.probe(now); {
				case claimed && allowed:
					// The ejection is over: this request is the one probe
					// that decides whether the instance is back.
					return &insts[i]
				case !allowed || h.ejected(now):
					c = classEjected
				}
			}
		}
		classes = append(classes, c)
		count[c]++
	}
	want := classAlive
	for _, c := range []uint8{classAlive, classWarning, classSuspect, classEjected} {
		if count[c] > 0 {
			want = c
			break
		}
	}
	if count[want] == 0 {
		return nil
	}
	var cbuf [64]int
	cands := cbuf[:0]
	for i, c := range classes {
		if c == want {
			cands = append(cands, i)
		}
	}
	if o.local != "" && want == classAlive {
		// --prefer-local: this node's own instance while it is healthy.
		for _, i := range cands {
			if insts[i].Node == o.local {
				return &insts[i]
			}
		}
	}
	if m := insts[0].Meta; len(m) > 0 && sel != selRandom && sel != selHedge {
		if s, ok := selectorFor(m[MetaBalancer]); ok {
			sel = s
		}
	}
	return &insts[sel.pick(st, insts, cands, o.key)]
}
