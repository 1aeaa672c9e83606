package gateway

import (
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
)

// selector chooses which of n usable instances of a service gets the next
// request. Implementations are safe for concurrent use, never block and take
// no lock shared between services; n is at least 1 and the result must be in
// [0, n). Per-service state lives in serviceState so that a policy needs no
// map of its own.
type selector interface {
	pick(st *serviceState, n int) int
}

// roundRobin hands requests to the usable instances in turn. When the set of
// usable instances changes the rotation simply continues over the new set.
type roundRobin struct{}

var _ selector = roundRobin{}

func (roundRobin) pick(st *serviceState, n int) int {
	return int((st.next.Add(1) - 1) % uint64(n))
}

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

	// Counters for metrics: answers by status class (index status/100,
	// 0 for anything else), retries, ejections, failed upstream exchanges.
	answers        [6]atomic.Uint64
	retries        atomic.Uint64
	ejections      atomic.Uint64
	upstreamErrors atomic.Uint64
}

// countAnswer records the status of an answer to the service.
func (st *serviceState) countAnswer(status int) {
	c := status / 100
	if c < 1 || c > 5 {
		c = 0
	}
	st.answers[c].Add(1)
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

// Classes of an instance, from the gossip status of its node and the
// gateway's own outlier record; a class is used only when no better one has
// an instance.
const (
	classSkip    uint8 = iota // dead or left, or already tried: never routed to
	classAlive                // alive or unknown to gossip
	classSuspect              // node suspect
	classEjected              // ejected by outlier detection: last resort
)

func classify(status string) uint8 {
	switch status {
	case api.StatusDead, api.StatusLeft:
		return classSkip
	case api.StatusSuspect:
		return classSuspect
	default:
		// alive, "" (gossip has not heard of the node yet) and anything
		// newer than this code count as alive: refusing traffic on an
		// unknown status would turn a gossip hiccup into an outage.
		return classAlive
	}
}

// choose picks the instance of insts that gets the request: instances on
// alive (or unknown) nodes first, suspect ones only when no alive one is
// left, never those on dead or departed nodes. It returns nil when none is
// usable. It does not allocate for services of up to 64 instances.
func choose(sel selector, st *serviceState, live Liveness, insts []api.Instance) *api.Instance {
	return chooseExcept(sel, st, live, insts, nil)
}

// chooseExcept is choose, skipping the instances whose "address:port" is in
// tried (a retry goes to another instance).
func chooseExcept(sel selector, st *serviceState, live Liveness, insts []api.Instance, tried []string) *api.Instance {
	var buf [64]uint8
	classes := buf[:0]
	var count [4]int
	now := time.Now().UnixNano()
	for i := range insts {
		c := classify(live.NodeStatus(insts[i].Node))
		if c != classSkip && (len(tried) > 0 || st.health.Load() != nil) {
			hp := st.hostport(&insts[i])
			if slices.Contains(tried, hp) {
				c = classSkip
			} else if c == classAlive && st.isEjected(hp, now) {
				c = classEjected
			}
		}
		classes = append(classes, c)
		count[c]++
	}
	want := classAlive
	for _, c := range []uint8{classAlive, classSuspect, classEjected} {
		if count[c] > 0 {
			want = c
			break
		}
	}
	n := count[want]
	if n == 0 {
		return nil
	}
	k := sel.pick(st, n)
	for i, c := range classes {
		if c != want {
			continue
		}
		if k == 0 {
			return &insts[i]
		}
		k--
	}
	return nil // unreachable while pick honours its contract
}
