package registry

import (
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Catalog is a watch-backed, in-memory copy of every instance in the
// registry. Lookups read an immutable snapshot through an atomic pointer:
// no lock and no network call on the request path. The catalog lists the
// prefix, then watches from the listed revision on; on compaction or a
// broken watch it lists again and replaces its snapshot, so deletes missed
// meanwhile are not kept. While the registry is unreachable it keeps
// serving its last snapshot.
type Catalog struct {
	cli    *clientv3.Client
	logger *slog.Logger
	// staleAfter is how long a watch may stay silent before the catalog
	// takes it for stuck and lists again.
	staleAfter time.Duration

	snap atomic.Pointer[catalogSnapshot]
	// state says whether the watch is live, and why not.
	state atomic.Pointer[catalogState]
	// relists counts full re-lists after the first, for tests and metrics.
	relists atomic.Int64

	changedMu sync.Mutex
	changed   chan struct{} // closed and replaced on every new snapshot
	// waiters are the channels of Wait, by service: closed when the
	// service's index moves on.
	waiters map[string]*waiter

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

type catalogSnapshot struct {
	rev      int64
	services map[string][]api.Instance // sorted by ID; never modified once stored
	// index is the revision of each service's last change: the services
	// present, and those gone since base (tombstones). A service not in it
	// has the index base, the revision of the last full list (or of the
	// last tombstone sweep). Never modified once stored.
	index map[string]int64
	base  int64
}

// indexOf is service's index in s (blocking queries, X-Herd-Index).
func (s *catalogSnapshot) indexOf(service string) int64 {
	if i, ok := s.index[service]; ok {
		return i
	}
	return s.base
}

// maxTombstones bounds the index entries kept for services that are
// gone: past it, base moves up to the current revision and they are
// dropped (every absent service's index moves forward, never back).
const maxTombstones = 1024

type catalogState struct {
	synced bool
	reason string
}

// DefaultStaleAfter is how long a catalog watch may go without any event or
// progress notification before it is taken for stuck: three of the members'
// default progress intervals.
const DefaultStaleAfter = 6 * time.Second

// NewCatalog returns a catalog reading from cli. staleAfter (zero means
// DefaultStaleAfter) bounds how long its watch may stay silent: members send
// a progress notification every WatchProgressInterval, so a longer silence
// means the connection is gone even if the client has not said so. Start
// runs it.
func NewCatalog(cli *clientv3.Client, staleAfter time.Duration, logger *slog.Logger) *Catalog {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if staleAfter <= 0 {
		staleAfter = DefaultStaleAfter
	}
	c := &Catalog{
		cli:        cli,
		staleAfter: staleAfter,
		logger:     logger.With("component", "catalog"),
		done:       make(chan struct{}),
		changed:    make(chan struct{}),
		waiters:    map[string]*waiter{},
	}
	c.snap.Store(&catalogSnapshot{services: map[string][]api.Instance{}, index: map[string]int64{}})
	c.state.Store(&catalogState{reason: "catalog has not listed the registry yet"})
	return c
}

// Start runs the list-and-watch loop in the background until Close.
func (c *Catalog) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		defer close(c.done)
		c.run(ctx)
	}()
}

// Close stops the loop and waits for it. Safe to call more than once, and
// without Start.
func (c *Catalog) Close() {
	c.closeOnce.Do(func() {
		if c.cancel != nil {
			c.cancel()
			<-c.done
		}
	})
}

// Instances returns the instances of service, sorted by ID. The slice is
// shared: callers must not modify it.
func (c *Catalog) Instances(service string) []api.Instance {
	return c.snap.Load().services[service]
}

// Service returns the instances of service (shared: not to be modified)
// and its index: the registry revision of the service's last change (an
// instance added, changed or removed; health and maintenance are in the
// value). The index only goes forward, also across a re-list, where a
// service that changed meanwhile gets the list's revision.
func (c *Catalog) Service(service string) ([]api.Instance, int64) {
	s := c.snap.Load()
	return s.services[service], s.indexOf(service)
}

// Wait returns the instances of service and its index once the index is
// past after, or when ctx ends (with what the catalog holds then).
func (c *Catalog) Wait(ctx context.Context, service string, after int64) ([]api.Instance, int64) {
	for {
		// The channel before the snapshot: a snapshot published after it
		// closes it.
		c.changedMu.Lock()
		w, ok := c.waiters[service]
		if !ok {
			w = &waiter{ch: make(chan struct{})}
			c.waiters[service] = w
		}
		w.n++
		c.changedMu.Unlock()
		ins, index := c.Service(service)
		if index > after {
			c.release(service, w)
			return ins, index
		}
		select {
		case <-w.ch:
			c.release(service, w)
		case <-ctx.Done():
			c.release(service, w)
			return c.Service(service)
		}
	}
}

// waiter is the channel the Waits on one service share, and how many
// there are: the last to leave removes it, so names that never change
// leave nothing behind.
type waiter struct {
	ch chan struct{}
	n  int
}

func (c *Catalog) release(service string, w *waiter) {
	c.changedMu.Lock()
	defer c.changedMu.Unlock()
	w.n--
	if w.n == 0 && c.waiters[service] == w {
		delete(c.waiters, service)
	}
}

// Has reports whether the catalog holds service/id (a binary search).
func (c *Catalog) Has(service, id string) bool {
	ins := c.snap.Load().services[service]
	i := sort.Search(len(ins), func(i int) bool { return ins[i].ID >= id })
	return i < len(ins) && ins[i].ID == id
}

// Services returns each service name with its instance count, sorted.
func (c *Catalog) Services() []api.ServiceSummary {
	s := c.snap.Load()
	out := make([]api.ServiceSummary, 0, len(s.services))
	for name, ins := range s.services {
		out = append(out, api.ServiceSummary{Name: name, Instances: len(ins)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Revision is the registry revision the snapshot reflects.
func (c *Catalog) Revision() int64 { return c.snap.Load().rev }

// Synced reports whether the catalog follows the registry live; when it
// does not, reason says why (it then serves its last snapshot).
func (c *Catalog) Synced() (bool, string) {
	s := c.state.Load()
	return s.synced, s.reason
}

// Relists reports how many times the catalog listed the registry again
// after its first list (compaction, broken watch, lost leader).
func (c *Catalog) Relists() int64 { return c.relists.Load() }

// Changed returns a channel closed at the next snapshot change.
func (c *Catalog) Changed() <-chan struct{} {
	c.changedMu.Lock()
	defer c.changedMu.Unlock()
	return c.changed
}

// publish stores s and wakes the waiters of the services whose index
// moved (all of them when moved is nil).
func (c *Catalog) publish(s *catalogSnapshot, moved map[string]int64) {
	c.snap.Store(s)
	c.changedMu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	for name, w := range c.waiters {
		if _, ok := moved[name]; ok || moved == nil {
			close(w.ch)
			delete(c.waiters, name)
		}
	}
	c.changedMu.Unlock()
}

func (c *Catalog) setState(synced bool, reason string) {
	old := c.state.Load()
	if old.synced == synced && old.reason == reason {
		return
	}
	c.state.Store(&catalogState{synced: synced, reason: reason})
	if synced {
		c.logger.Info("catalog in sync with the registry", "revision", c.Revision())
	} else if old.synced {
		c.logger.Warn("catalog lost the registry; serving the last snapshot", "reason", reason, "revision", c.Revision())
	}
}

func (c *Catalog) run(ctx context.Context) {
	f := &follower{cli: c.cli, name: "catalog", prefix: ServicesPrefix, staleAfter: c.staleAfter, logger: c.logger, m: catalogMirror{c},
		relists: func() { c.relists.Add(1) }}
	f.run(ctx)
}

// catalogMirror feeds the catalog from its follower.
type catalogMirror struct{ c *Catalog }

func (m catalogMirror) listed(kvs []*mvccpb.KeyValue, rev int64) { m.c.listed(kvs, rev) }
func (m catalogMirror) events(evs []*clientv3.Event)             { m.c.apply(evs) }
func (m catalogMirror) progress(rev int64)                       { m.c.progress(rev) }
func (m catalogMirror) state(synced bool, reason string)         { m.c.setState(synced, reason) }

// listed publishes a snapshot of every instance listed at rev. A service
// keeps its index when it is as before (a re-list after compaction finds
// most unchanged); one that changed, or is gone, gets rev.
func (c *Catalog) listed(kvs []*mvccpb.KeyValue, rev int64) {
	services := map[string][]api.Instance{}
	for _, kv := range kvs {
		in, ok := c.decode(kv)
		if ok {
			services[in.Service] = append(services[in.Service], in)
		}
	}
	cur := c.snap.Load()
	index := make(map[string]int64, len(services))
	for name, ins := range services {
		sortByID(ins)
		if old, ok := cur.services[name]; ok && reflect.DeepEqual(old, ins) {
			index[name] = cur.indexOf(name)
		} else {
			index[name] = rev
		}
	}
	c.publish(&catalogSnapshot{rev: rev, services: services, index: index, base: rev}, nil)
}

// progress moves the snapshot's revision on to rev, which the member
// says this watch has caught up with.
func (c *Catalog) progress(rev int64) {
	cur := c.snap.Load()
	if rev > cur.rev {
		c.snap.Store(&catalogSnapshot{rev: rev, services: cur.services, index: cur.index, base: cur.base})
	}
}

// apply makes a new snapshot from the current one and events. Events at or
// below the snapshot's revision are dropped (a resumed watch may repeat
// them). The new revision is that of the last event, never the response
// header's: a watch catching up is fed in batches whose header carries the
// store's current revision, ahead of the events still to come.
func (c *Catalog) apply(events []*clientv3.Event) {
	cur := c.snap.Load()
	var touched map[string]map[string]*api.Instance // service -> id -> instance (nil: deleted)
	var moved map[string]int64                      // service -> its last event's revision
	rev := cur.rev
	for _, ev := range events {
		if ev.Kv.ModRevision <= cur.rev {
			continue
		}
		rev = max(rev, ev.Kv.ModRevision)
		service, id, ok := splitKey(string(ev.Kv.Key))
		if !ok {
			continue
		}
		if touched == nil {
			touched, moved = map[string]map[string]*api.Instance{}, map[string]int64{}
		}
		moved[service] = max(moved[service], ev.Kv.ModRevision)
		if touched[service] == nil {
			touched[service] = map[string]*api.Instance{}
		}
		switch ev.Type {
		case mvccpb.PUT:
			in, ok := c.decode(ev.Kv)
			if !ok {
				touched[service][id] = nil
				continue
			}
			touched[service][id] = &in
		case mvccpb.DELETE:
			touched[service][id] = nil
		}
	}
	if touched == nil {
		if rev > cur.rev {
			c.snap.Store(&catalogSnapshot{rev: rev, services: cur.services, index: cur.index, base: cur.base})
		}
		return
	}
	services := make(map[string][]api.Instance, len(cur.services)+len(touched))
	for name, ins := range cur.services {
		services[name] = ins
	}
	index := make(map[string]int64, len(cur.index)+len(touched))
	for name, i := range cur.index {
		index[name] = i
	}
	for name, changes := range touched {
		if next := merged(cur.services[name], changes); len(next) > 0 {
			services[name] = next
		} else {
			delete(services, name)
		}
		index[name] = moved[name]
	}
	base := cur.base
	if len(index)-len(services) > maxTombstones {
		base = rev
		for name := range index {
			if _, ok := services[name]; !ok {
				delete(index, name)
			}
		}
	}
	c.publish(&catalogSnapshot{rev: rev, services: services, index: index, base: base}, moved)
}

func (c *Catalog) decode(kv *mvccpb.KeyValue) (api.Instance, bool) {
	var in api.Instance
	service, id, ok := splitKey(string(kv.Key))
	if !ok {
		return in, false
	}
	if err := json.Unmarshal(kv.Value, &in); err != nil {
		c.logger.Warn("skipping an undecodable registry value", "key", string(kv.Key), "err", err)
		return in, false
	}
	// The key is the truth for service and ID.
	in.Service, in.ID = service, id
	return in, true
}

// splitKey parses /herd/services/<service>/<id>.
func splitKey(key string) (service, id string, ok bool) {
	rest, found := strings.CutPrefix(key, ServicesPrefix)
	if !found {
		return "", "", false
	}
	service, id, found = strings.Cut(rest, "/")
	if !found || service == "" || id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return service, id, true
}

// merged is old (sorted by ID) with changes applied (nil: deleted), sorted.
// The changed IDs are sorted and each is found in old by binary search; the
// unchanged runs between them are copied whole. A batch of k changes to a
// service of n instances costs one copy of n and k log n comparisons, with
// no per-instance hashing (a service of a thousand instances takes a steady
// stream of writes on every node's catalog).
func merged(old []api.Instance, changes map[string]*api.Instance) []api.Instance {
	ids := make([]string, 0, len(changes))
	added := 0
	for id, in := range changes {
		ids = append(ids, id)
		if in != nil {
			added++
		}
	}
	sort.Strings(ids)
	next := make([]api.Instance, 0, len(old)+added)
	for _, id := range ids {
		i := sort.Search(len(old), func(i int) bool { return old[i].ID >= id })
		next = append(next, old[:i]...)
		if i < len(old) && old[i].ID == id {
			i++ // replaced or deleted
		}
		old = old[i:]
		if in := changes[id]; in != nil {
			next = append(next, *in)
		}
	}
	return append(next, old...)
}

func sortByID(ins []api.Instance) {
	sort.Slice(ins, func(i, j int) bool { return ins[i].ID < ins[j].ID })
}
