package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// mirror is what a prefix follower feeds: the whole prefix at a revision
// (the first list and every re-list), the events after it, progress
// notifications, and whether the watch is live. Every call comes from the
// follower's one goroutine.
type mirror interface {
	listed(kvs []*mvccpb.KeyValue, rev int64)
	events(evs []*clientv3.Event)
	progress(rev int64)
	state(synced bool, reason string)
}

// follower lists a prefix and watches it from the listed revision on; on
// compaction, a broken or canceled watch, a lost leader or a watch silent
// for longer than staleAfter it lists again, so deletes missed meanwhile are
// not kept. The catalog and the ACL token set are both mirrors of one.
type follower struct {
	cli        *clientv3.Client
	name       string // for the log: "catalog", "token"
	prefix     string
	staleAfter time.Duration
	logger     *slog.Logger
	m          mirror
	// relists counts the lists after the first.
	relists func()
}

// run lists and watches until ctx is done.
func (f *follower) run(ctx context.Context) {
	b := newBackoff(100*time.Millisecond, 2*time.Second)
	first := true
	for ctx.Err() == nil {
		rev, err := f.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.m.state(false, "cannot list the registry: "+err.Error())
			_ = sleepCtx(ctx, b.next())
			continue
		}
		if !first && f.relists != nil {
			f.relists()
		}
		first = false
		b.reset()
		f.m.state(true, "")
		reason := f.watch(ctx, rev)
		if ctx.Err() != nil {
			return
		}
		f.m.state(false, reason)
		f.logger.Info(f.name+" watch ended; listing again", "reason", reason)
		_ = sleepCtx(ctx, b.next())
	}
}

// list reads the prefix at one revision (linearizably) and hands it over.
func (f *follower) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 5*time.Second)
	defer cancel()
	resp, err := f.cli.Get(lctx, f.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	f.m.listed(resp.Kvs, resp.Header.Revision)
	return resp.Header.Revision, nil
}

// watch hands over events after rev until the watch ends, and says why it
// ended.
func (f *follower) watch(ctx context.Context, rev int64) string {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// Watch from rev itself, not rev+1: etcd sends progress notifications
	// only to watchers whose start revision it has reached, so on a quiet
	// registry a watch from rev+1 would stay silent. Events at rev are
	// already listed; mirrors drop them.
	wch := f.cli.Watch(wctx, f.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev),
		clientv3.WithProgressNotify())
	stale := time.NewTimer(f.staleAfter)
	defer stale.Stop()
	var held *heldResponse // one drain read past the events it handed over
	var last time.Time     // when events were last handed over
	for {
		var wr clientv3.WatchResponse
		var ok bool
		if held != nil {
			wr, ok, held = held.wr, held.ok, nil
		} else {
			select {
			case wr, ok = <-wch:
			case <-stale.C:
				return fmt.Sprintf("watch silent for %s (registry unreachable?)", f.staleAfter)
			}
		}
		if !ok {
			return "watch closed"
		}
		stale.Reset(f.staleAfter)
		if wr.CompactRevision != 0 {
			return "watch revision was compacted"
		}
		if err := wr.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return "watch revision was compacted"
			}
			return "watch failed: " + err.Error()
		}
		if wr.Canceled {
			return "watch canceled"
		}
		if wr.IsProgressNotify() {
			f.m.progress(wr.Header.Revision)
			continue
		}
		var evs []*clientv3.Event
		evs, held = drain(wch, wr.Events, time.Until(last.Add(coalesce)))
		f.m.events(evs)
		last = time.Now()
	}
}

// coalesce is the shortest time between two hand-overs of events to a
// mirror. A change to a quiet registry is handed over at once; under a
// stream of registrations the mirror (the catalog: a new sorted copy of
// each service changed) does its work at most 1/coalesce times a second,
// on everything that came in meanwhile, instead of once per response:
// with a service of 1,000 instances registered into at 1,000/s, that was
// a copy of the whole service per registration on every node.
const coalesce = 10 * time.Millisecond

// heldResponse is a watch response read from the channel and not handled
// yet.
type heldResponse struct {
	wr clientv3.WatchResponse
	ok bool
}

// drain appends to evs the events of the watch responses that come in wch
// for linger (none when it is not positive) and those already waiting
// then, so that a burst of registrations becomes one new snapshot rather
// than one per event: how much a mirror does per second stays bounded
// however fast the registry changes. It stops when nothing waits, or at a
// response that is not plain events (or the channel's close), which it
// returns for the caller to handle next.
func drain(wch clientv3.WatchChan, evs []*clientv3.Event, linger time.Duration) ([]*clientv3.Event, *heldResponse) {
	var lingering <-chan time.Time
	if linger > 0 {
		t := time.NewTimer(linger)
		defer t.Stop()
		lingering = t.C
	}
	for len(evs) < 10000 {
		var wr clientv3.WatchResponse
		var ok bool
		if lingering != nil {
			select {
			case wr, ok = <-wch:
			case <-lingering:
				lingering = nil
				continue
			}
		} else {
			select {
			case wr, ok = <-wch:
			default:
				return evs, nil
			}
		}
		if !ok || wr.Err() != nil || wr.Canceled || wr.CompactRevision != 0 || wr.IsProgressNotify() {
			return evs, &heldResponse{wr, ok}
		}
		evs = append(evs, wr.Events...)
	}
	return evs, nil
}
