package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/herdcluster/herd/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ServicesPrefix is the key prefix of every instance.
const ServicesPrefix = "/herd/services/"

// InstanceKey is the registry key of an instance.
func InstanceKey(service, id string) string { return ServicesPrefix + service + "/" + id }

// RegistrarConfig configures a node's registrar.
type RegistrarConfig struct {
	// Node is the name written into every instance this registrar holds.
	Node string
	// TTL is the lease time-to-live (default 10s). Keepalives go out every
	// TTL/3; a node that stops sending them loses its instances after TTL.
	TTL time.Duration
	// RequestTimeout bounds each write (default 5s); a write that cannot
	// reach a quorum in that time fails with ErrUnavailable.
	RequestTimeout time.Duration
	// Logger receives the registrar's log lines.
	Logger *slog.Logger
	// OnChange, when set, is told of every instance the registrar starts
	// or stops holding (in nil), and of every change made by a
	// registration: the node runs the instances' checks from it. It is
	// called synchronously, without the registrar's locks, and must not
	// block.
	OnChange func(service, id string, in *api.Instance)
	// Overlay, when set, sets what the node decides about its instances
	// beyond their registration (maintenance): it is applied to every
	// instance value before it is written, and Reapply writes again the
	// instances whose value it changes. It must not call the registrar.
	Overlay func(in *api.Instance)
}

// DefaultRegistrarConfig returns the defaults for node.
func DefaultRegistrarConfig(node string) RegistrarConfig {
	return RegistrarConfig{Node: node, TTL: 10 * time.Second, RequestTimeout: 5 * time.Second}
}

// Validate checks the configuration.
func (c *RegistrarConfig) Validate() error {
	if err := api.ValidateName("node", c.Node); err != nil {
		return err
	}
	if c.TTL < 2*time.Second {
		return fmt.Errorf("lease TTL %s is under 2s", c.TTL)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("request timeout %s must be positive", c.RequestTimeout)
	}
	return nil
}

// Registrar holds one lease for the node and every instance of the node
// under it. When the lease is lost (expired while the registry was
// unreachable, revoked, or its keepalive stream broke for longer than the
// TTL) it grants a new one and writes every instance again, forever, until
// Close.
//
// A Register whose outcome is unknown (it timed out, the write may have
// landed) is remembered as doubtful: unless it is registered again, the
// registrar deletes whatever it wrote once the registry answers, so no
// instance the caller was told had failed lingers under the lease.
type Registrar struct {
	cli    *clientv3.Client
	cfg    RegistrarConfig
	logger *slog.Logger

	// ops orders writes: Register and Deregister share it (one key at a
	// time), re-registration under a new lease and the doubt clean-up take
	// it alone, so no instance is written under a dead lease after the loop
	// has re-registered the rest.
	ops *opLock
	// mu guards the fields below.
	mu      sync.Mutex
	desired map[string]api.Instance // by key
	// kept marks the desired instances kept in the registry for restarts
	// (kept.go); loaded says whether those of an earlier run were read.
	kept   map[string]bool
	loaded bool
	// doubtful holds the values of writes whose outcome is unknown, by key.
	doubtful map[string]string
	lease    clientv3.LeaseID // 0 while no lease is held
	// granted lists leases granted and not known to be gone; Close revokes
	// them all.
	granted  map[clientv3.LeaseID]struct{}
	leaseGen int

	// check asks the lease holder to ask the registry about the lease now
	// (CheckLease), instead of waiting for the next keepalive.
	check chan struct{}

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	started   bool
}

// NewRegistrar returns a registrar using cli. Start runs it.
func NewRegistrar(cli *clientv3.Client, cfg RegistrarConfig) (*Registrar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registrar{
		cli:      cli,
		cfg:      cfg,
		logger:   logger.With("component", "registrar"),
		ops:      newOpLock(),
		desired:  make(map[string]api.Instance),
		kept:     make(map[string]bool),
		doubtful: make(map[string]string),
		granted:  make(map[clientv3.LeaseID]struct{}),
		done:     make(chan struct{}),
		check:    make(chan struct{}, 1),
	}
	return r, nil
}

// RegisterKept is Register for instances that must survive a restart of the
// node (those registered through the agent API): they are also kept in the
// registry, in the same transaction (kept.go), and registered again when
// the node starts.
func (r *Registrar) RegisterKept(ctx context.Context, in api.Instance) error {
	return r.register(ctx, in, true)
}

// Start runs the lease loop in the background until Close.
func (r *Registrar) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	r.cancel = cancel
	r.started = true
	r.mu.Unlock()
	go func() {
		defer close(r.done)
		r.loop(ctx)
	}()
}

// lock takes the write lock alone, or gives up when ctx is done.
func (r *Registrar) lock(ctx context.Context) error {
	if err := r.ops.lock(ctx); err != nil {
		return fmt.Errorf("%w: waiting for another registry write: %w", ErrUnavailable, err)
	}
	return nil
}

func (r *Registrar) unlock() { r.ops.unlock() }

// lockKey takes the write lock shared and key alone.
func (r *Registrar) lockKey(ctx context.Context, key string) error {
	if err := r.ops.lockShared(ctx, key); err != nil {
		return fmt.Errorf("%w: waiting for another registry write: %w", ErrUnavailable, err)
	}
	return nil
}

func (r *Registrar) unlockKey(key string) { r.ops.unlockShared(key, true) }

// LeaseID returns the lease currently held, 0 when none is.
func (r *Registrar) LeaseID() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Leases reports how many leases have been granted so far.
func (r *Registrar) Leases() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leaseGen
}

// Holds reports whether the registrar holds service/id.
func (r *Registrar) Holds(service, id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.desired[InstanceKey(service, id)]
	return ok
}

// AnyMissing reports whether has is false for any instance this registrar
// holds, without copying them.
func (r *Registrar) AnyMissing(has func(service, id string) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.desired {
		if !has(in.Service, in.ID) {
			return true
		}
	}
	return false
}

// Instances returns the instances this registrar holds, sorted by key.
func (r *Registrar) Instances() []api.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.desired))
	for k := range r.desired {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]api.Instance, 0, len(keys))
	for _, k := range keys {
		out = append(out, r.desired[k])
	}
	return out
}

func (r *Registrar) loop(ctx context.Context) {
	backoff := newBackoff(200*time.Millisecond, 5*time.Second)
	failures := 0
	for ctx.Err() == nil {
		lease, ka, stopKeepAlive, err := r.grantAndRegister(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			// Log the first failure and then every tenth, so a long outage
			// is visible without flooding the log.
			if failures == 1 || failures%10 == 0 {
				r.logger.Warn("cannot hold the node lease; retrying", "attempt", failures, "err", err)
			}
			_ = sleepCtx(ctx, backoff.next())
			continue
		}
		if failures > 0 {
			r.logger.Info("node lease granted and instances registered again", "lease", fmt.Sprintf("%x", lease), "after_attempts", failures)
		}
		failures = 0
		backoff.reset()
		r.holdLease(ctx, lease, ka)
		stopKeepAlive()
		r.mu.Lock()
		if r.lease == lease {
			r.lease = 0
		}
		r.mu.Unlock()
		if ctx.Err() == nil {
			r.logger.Warn("node lease lost; granting a new one and registering again", "lease", fmt.Sprintf("%x", lease))
		}
	}
}

// CheckLease makes the registrar ask the registry now whether its lease
// still exists, rather than at the next keepalive (up to TTL/3 away). The
// node calls it when an instance it holds vanished from the catalog: a
// lease can be revoked while this node kept it alive (etcd #15247: a
// leader resuming from a pause longer than the TTL revokes the leases it
// did not hear renewed), and the sooner it is noticed, the shorter the
// instances are missing. It never blocks.
func (r *Registrar) CheckLease() {
	select {
	case r.check <- struct{}{}:
	default:
	}
}

// holdLease drains keepalive responses until the channel closes (the lease
// expired, was revoked, or its keepalives failed for a whole TTL), or a
// CheckLease finds the lease gone, cleaning up doubtful writes now and then
// meanwhile.
func (r *Registrar) holdLease(ctx context.Context, lease clientv3.LeaseID, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	t := time.NewTicker(r.cfg.TTL / 3)
	defer t.Stop()
	for {
		select {
		case _, ok := <-ka:
			if !ok {
				return
			}
		case <-t.C:
			r.cleanDoubtful(ctx)
		case <-r.check:
			cctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
			resp, err := r.cli.TimeToLive(cctx, lease)
			cancel()
			if err == nil && resp.TTL <= 0 {
				r.logger.Warn("node lease revoked or expired although it was kept alive; registering again", "lease", fmt.Sprintf("%x", lease))
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// grantAndRegister grants a lease, starts its keepalive and writes every
// desired instance under it. The returned cancel stops the keepalive.
func (r *Registrar) grantAndRegister(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, context.CancelFunc, error) {
	if err := r.lock(ctx); err != nil {
		return 0, nil, nil, err
	}
	defer r.unlock()
	gctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	grant, err := r.cli.Grant(gctx, int64(r.cfg.TTL/time.Second))
	cancel()
	if err != nil {
		return 0, nil, nil, fmt.Errorf("grant lease: %w", unavailable(err))
	}
	r.mu.Lock()
	r.granted[grant.ID] = struct{}{}
	r.mu.Unlock()
	kactx, kacancel := context.WithCancel(ctx)
	ka, err := r.cli.KeepAlive(kactx, grant.ID)
	if err != nil {
		kacancel()
		r.revoke(grant.ID)
		return 0, nil, nil, fmt.Errorf("keep lease alive: %w", err)
	}
	if err := r.loadKept(ctx); err != nil {
		kacancel()
		r.revoke(grant.ID)
		return 0, nil, nil, err
	}
	r.mu.Lock()
	want := make([]api.Instance, 0, len(r.desired))
	for _, in := range r.desired {
		want = append(want, in)
	}
	r.mu.Unlock()
	for i := range want {
		want[i] = want[i].Clone()
		r.overlay(&want[i])
	}
	conflicts, err := r.putMany(ctx, grant.ID, want)
	if err != nil {
		kacancel()
		r.revoke(grant.ID)
		return 0, nil, nil, err
	}
	var lost []api.Instance
	for _, c := range conflicts {
		// Another node took the key meanwhile; it is theirs now.
		in := c.in
		r.logger.Warn("instance now belongs to another node; no longer registering it", "service", in.Service, "id", in.ID, "err", c.err)
		r.mu.Lock()
		delete(r.desired, InstanceKey(in.Service, in.ID))
		if r.kept[InstanceKey(in.Service, in.ID)] {
			lost = append(lost, in)
		}
		delete(r.kept, InstanceKey(in.Service, in.ID))
		r.mu.Unlock()
		r.notify(in.Service, in.ID, nil)
	}
	r.forgetKept(ctx, lost)
	r.mu.Lock()
	r.lease = grant.ID
	r.leaseGen++
	stale := make([]clientv3.LeaseID, 0, len(r.granted))
	for id := range r.granted {
		if id != grant.ID {
			stale = append(stale, id)
		}
	}
	r.mu.Unlock()
	// Older leases hold nothing now (every instance moved to the new one);
	// revoke any that is still alive on the server.
	for _, id := range stale {
		r.revoke(id)
	}
	return grant.ID, ka, kacancel, nil
}

// Register writes in under the node's lease and keeps it there (across lease
// losses) until Deregister or Close. It fails with ErrUnavailable when the
// registry cannot take the write (no lease held, no quorum) within the
// request timeout, and ErrConflict when the key belongs to another node. A
// failed Register is not written again later, and whatever it may have
// written is removed once the registry answers.
func (r *Registrar) Register(ctx context.Context, in api.Instance) error {
	return r.register(ctx, in, false)
}

func (r *Registrar) register(ctx context.Context, in api.Instance, keep bool) error {
	r.overlay(&in)
	if err := in.Validate(); err != nil {
		return err
	}
	key := InstanceKey(in.Service, in.ID)
	if err := r.lockKey(ctx, key); err != nil {
		return err
	}
	defer r.unlockKey(key)
	// Again under the lock: a Reapply that ran in between saw no such
	// instance yet, so this write must carry the Overlay as it is now.
	r.overlay(&in)
	r.mu.Lock()
	lease, wasKept := r.lease, r.kept[key]
	r.mu.Unlock()
	if lease == 0 {
		return ErrNoLease
	}
	val, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode instance: %w", err)
	}
	if err := r.put(ctx, lease, in, string(val), r.keptOps(in, string(val), keep, wasKept)); err != nil {
		if !errors.Is(err, ErrConflict) {
			r.mu.Lock()
			r.doubtful[key] = string(val)
			r.mu.Unlock()
		}
		return err
	}
	r.mu.Lock()
	r.desired[key] = in
	delete(r.doubtful, key)
	if keep {
		r.kept[key] = true
	} else {
		delete(r.kept, key)
	}
	r.mu.Unlock()
	r.notify(in.Service, in.ID, &in)
	return nil
}

// cleanDoubtful deletes what doubtful writes may have left, unless the key
// has since been registered again or changed.
func (r *Registrar) cleanDoubtful(ctx context.Context) {
	r.mu.Lock()
	n := len(r.doubtful)
	r.mu.Unlock()
	if n == 0 || r.lock(ctx) != nil {
		return
	}
	defer r.unlock()
	r.mu.Lock()
	todo := make(map[string]string, len(r.doubtful))
	for k, v := range r.doubtful {
		if _, held := r.desired[k]; held {
			delete(r.doubtful, k)
			continue
		}
		todo[k] = v
	}
	r.mu.Unlock()
	for key, val := range todo {
		// The instance and its kept copy (the write may have kept it), each
		// only if it holds what the doubtful write wrote.
		service, id, _ := splitKey(key)
		kkey := keptKey(r.cfg.Node, service, id)
		cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
		_, err := r.cli.Txn(cctx).Then(
			clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", val)}, []clientv3.Op{clientv3.OpDelete(key)}, nil),
			clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(kkey), "=", val)}, []clientv3.Op{clientv3.OpDelete(kkey)}, nil),
		).Commit()
		cancel()
		if err != nil {
			return // try again at the next tick
		}
		r.mu.Lock()
		delete(r.doubtful, key)
		r.mu.Unlock()
	}
}

// Deregister removes the instance service/id of this node from the registry
// and from the set kept registered. ErrNotFound when the node holds no such
// instance.
func (r *Registrar) Deregister(ctx context.Context, service, id string) error {
	key := InstanceKey(service, id)
	if err := r.lockKey(ctx, key); err != nil {
		return err
	}
	defer r.unlockKey(key)
	r.mu.Lock()
	_, held := r.desired[key]
	r.mu.Unlock()
	// The kept copy goes with the instance, whether or not this run kept it
	// (a copy left from before is dropped too).
	forget := clientv3.OpDelete(keptKey(r.cfg.Node, service, id))
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.cli.Get(cctx, key)
	if err != nil {
		return unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		if !held {
			return fmt.Errorf("%s/%s: %w", service, id, ErrNotFound)
		}
		// Held, but not in the registry now (the lease was lost).
		if _, err := r.cli.Txn(cctx).Then(forget).Commit(); err != nil {
			return unavailable(err)
		}
	} else {
		var cur api.Instance
		if err := json.Unmarshal(resp.Kvs[0].Value, &cur); err == nil && cur.Node != r.cfg.Node {
			return fmt.Errorf("%s/%s is registered by node %q: %w", service, id, cur.Node, ErrConflict)
		}
		txn, err := r.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpDelete(key), forget).Commit()
		if err != nil {
			return unavailable(err)
		}
		if !txn.Succeeded {
			return fmt.Errorf("%s/%s changed while deregistering; try again: %w", service, id, ErrConflict)
		}
	}
	r.mu.Lock()
	delete(r.desired, key)
	delete(r.doubtful, key)
	delete(r.kept, key)
	r.mu.Unlock()
	r.notify(service, id, nil)
	return nil
}

// maxTxnOps is how many operations one registry transaction carries: etcd's
// default limit (--max-txn-ops).
const maxTxnOps = 128

type conflict struct {
	in  api.Instance
	err error
}

// putMany writes ins under lease, maxTxnOps at a time in two round trips
// each (read the keys, then write those that are absent or this node's, on
// the condition that none changed in between): a node that holds a
// thousand instances registers them again in a few dozen round trips, not
// two thousand. Keys another node holds are not written and come back as
// conflicts. A batch whose keys changed in between is written one by one.
func (r *Registrar) putMany(ctx context.Context, lease clientv3.LeaseID, ins []api.Instance) ([]conflict, error) {
	var conflicts []conflict
	for len(ins) > 0 {
		n := min(len(ins), maxTxnOps)
		batch := ins[:n]
		ins = ins[n:]
		c, err := r.putBatch(ctx, lease, batch)
		if err != nil {
			return nil, err
		}
		conflicts = append(conflicts, c...)
	}
	return conflicts, nil
}

func (r *Registrar) putBatch(ctx context.Context, lease clientv3.LeaseID, batch []api.Instance) ([]conflict, error) {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	defer cancel()
	gets := make([]clientv3.Op, len(batch))
	for i, in := range batch {
		gets[i] = clientv3.OpGet(InstanceKey(in.Service, in.ID))
	}
	read, err := r.cli.Txn(cctx).Then(gets...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %d instances: %w", len(batch), unavailable(err))
	}
	var conflicts []conflict
	var cmps []clientv3.Cmp
	var puts []clientv3.Op
	for i, in := range batch {
		key := InstanceKey(in.Service, in.ID)
		val, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode instance: %w", err)
		}
		kvs := read.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			var cur api.Instance
			if err := json.Unmarshal(kvs[0].Value, &cur); err == nil && cur.Node != r.cfg.Node {
				conflicts = append(conflicts, conflict{in, fmt.Errorf("%s/%s is registered by node %q: %w", in.Service, in.ID, cur.Node, ErrConflict)})
				continue
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision))
		}
		puts = append(puts, clientv3.OpPut(key, string(val), clientv3.WithLease(lease)))
	}
	if len(puts) == 0 {
		return conflicts, nil
	}
	txn, err := r.cli.Txn(cctx).If(cmps...).Then(puts...).Commit()
	if err != nil {
		return nil, fmt.Errorf("register %d instances: %w", len(puts), unavailable(err))
	}
	if txn.Succeeded {
		return conflicts, nil
	}
	// Something changed in between: one by one.
	conflicts = conflicts[:0]
	for _, in := range batch {
		val, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode instance: %w", err)
		}
		err = r.put(ctx, lease, in, string(val), nil)
		switch {
		case errors.Is(err, ErrConflict):
			conflicts = append(conflicts, conflict{in, err})
		case err != nil:
			return nil, fmt.Errorf("register %s/%s: %w", in.Service, in.ID, err)
		}
	}
	return conflicts, nil
}

// put writes in (encoded: val) under lease, and the operations with in the
// same transaction, unless the key belongs to another node.
func (r *Registrar) put(ctx context.Context, lease clientv3.LeaseID, in api.Instance, val string, with []clientv3.Op) error {
	key := InstanceKey(in.Service, in.ID)
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	defer cancel()
	for {
		// One round trip for the usual cases: create if absent, replace if
		// it is under this node's lease already; otherwise read who owns it.
		puts := append([]clientv3.Op{clientv3.OpPut(key, val, clientv3.WithLease(lease))}, with...)
		txn, err := r.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(puts...).
			Else(clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", int64(lease))},
				puts,
				[]clientv3.Op{clientv3.OpGet(key)})).Commit()
		if err != nil {
			return unavailable(err)
		}
		if txn.Succeeded {
			return nil
		}
		inner := txn.Responses[0].GetResponseTxn()
		if inner.Succeeded {
			return nil
		}
		kvs := inner.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue // deleted in between
		}
		var cur api.Instance
		if err := json.Unmarshal(kvs[0].Value, &cur); err == nil && cur.Node != r.cfg.Node {
			return fmt.Errorf("%s/%s is registered by node %q: %w", in.Service, in.ID, cur.Node, ErrConflict)
		}
		txn, err = r.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)).
			Then(puts...).Commit()
		if err != nil {
			return unavailable(err)
		}
		if txn.Succeeded {
			return nil
		}
	}
}

// revoke revokes lease and forgets it once the registry confirms it is gone.
func (r *Registrar) revoke(lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.revokeCtx(ctx, lease) //nolint:errcheck // best effort
}

func (r *Registrar) revokeCtx(ctx context.Context, lease clientv3.LeaseID) error {
	_, err := r.cli.Revoke(clientv3.WithRequireLeader(ctx), lease)
	if err == nil || errors.Is(err, errLeaseNotFound) {
		r.mu.Lock()
		delete(r.granted, lease)
		r.mu.Unlock()
		return nil
	}
	return unavailable(err)
}

// Close stops the lease loop, then revokes every lease the registrar
// granted, so every instance of the node leaves the registry (and peers stop
// routing here) at once rather than after the TTL. ctx bounds the revokes.
// Safe to call more than once.
func (r *Registrar) Close(ctx context.Context) error {
	var errs []error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		started, cancel := r.started, r.cancel
		r.mu.Unlock()
		if started {
			cancel()
			<-r.done
		}
		r.mu.Lock()
		leases := make([]clientv3.LeaseID, 0, len(r.granted))
		for id := range r.granted {
			leases = append(leases, id)
		}
		r.lease = 0
		r.mu.Unlock()
		for _, id := range leases {
			cctx, c := context.WithTimeout(ctx, r.cfg.RequestTimeout)
			if err := r.revokeCtx(cctx, id); err != nil {
				errs = append(errs, fmt.Errorf("revoke lease %x: %w", id, err))
			}
			c()
		}
	})
	return errors.Join(errs...)
}

// backoff is a capped exponential backoff with full jitter.
type backoff struct {
	base, max, cur time.Duration
}

func newBackoff(base, max time.Duration) *backoff { return &backoff{base: base, max: max, cur: base} }

func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, b.max)
	return d
}

func (b *backoff) reset() { b.cur = b.base }
