package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/herdcluster/herd/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The registrations made through the agent API survive a restart of their
// node: each is kept in the registry itself, at
//
//	/herd/kept/<node>/<service>/<id>  the instance's JSON, under no lease
//
// written in the same transaction as the instance key (one raft entry, one
// fsync on each voter, nothing on the node's own disk), deleted in the same
// transaction as a deregistration. A node that starts again reads its
// prefix once, when it first holds a lease, and registers what it finds
// (registry.putMany: a few round trips for thousands). The catalog follows
// /herd/services/ only, so kept keys wake no watcher and cost no memory
// outside the registry. They are forgotten by `herd leave` (the node's own
// prefix) and by `herd force-leave` (the dead node's).
const KeptPrefix = "/herd/kept/"

// keptPrefixOf is where node's kept registrations live.
func keptPrefixOf(node string) string { return KeptPrefix + node + "/" }

// keptKey is the kept-registration key of service/id on node.
func keptKey(node, service, id string) string { return keptPrefixOf(node) + service + "/" + id }

// keptOps are the operations that go with writing in: keep it (keep), or
// stop keeping it (wasKept but not keep), or nothing.
func (r *Registrar) keptOps(in api.Instance, val string, keep, wasKept bool) []clientv3.Op {
	switch {
	case keep:
		return []clientv3.Op{clientv3.OpPut(keptKey(r.cfg.Node, in.Service, in.ID), val)}
	case wasKept:
		return []clientv3.Op{clientv3.OpDelete(keptKey(r.cfg.Node, in.Service, in.ID))}
	}
	return nil
}

// loadKept reads the node's kept registrations into desired, once: the
// instances registered since the start win over what was kept. The caller
// holds the write lock alone.
func (r *Registrar) loadKept(ctx context.Context) error {
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	if loaded {
		return nil
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.cli.Get(cctx, keptPrefixOf(r.cfg.Node), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read the kept registrations: %w", unavailable(err))
	}
	var added []api.Instance
	defer func() {
		for i := range added {
			r.notify(added[i].Service, added[i].ID, &added[i])
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, kv := range resp.Kvs {
		var in api.Instance
		if err := json.Unmarshal(kv.Value, &in); err != nil {
			r.logger.Warn("dropping a kept registration that does not decode", "key", string(kv.Key), "err", err)
			continue
		}
		r.overlay(&in)
		if err := in.Validate(); err != nil {
			r.logger.Warn("dropping an invalid kept registration", "key", string(kv.Key), "err", err)
			continue
		}
		key := InstanceKey(in.Service, in.ID)
		if _, ok := r.desired[key]; ok {
			continue
		}
		r.desired[key] = in
		r.kept[key] = true
		added = append(added, in)
	}
	r.loaded = true
	if len(added) > 0 {
		r.logger.Info("registering the instances kept from before the restart", "count", len(added))
	}
	return nil
}

// forgetKept deletes the kept registrations of instances now held by
// another node (best effort: a leftover is dropped again at the next
// start).
func (r *Registrar) forgetKept(ctx context.Context, ins []api.Instance) {
	for len(ins) > 0 {
		n := min(len(ins), maxTxnOps)
		ops := make([]clientv3.Op, 0, n)
		for _, in := range ins[:n] {
			ops = append(ops, clientv3.OpDelete(keptKey(r.cfg.Node, in.Service, in.ID)))
		}
		ins = ins[n:]
		cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
		_, err := r.cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			r.logger.Warn("could not forget the kept registrations of instances another node holds", "count", len(ops), "err", unavailable(err))
		}
	}
}

// ForgetKept deletes every registration node keeps for its restarts, for a
// node that leaves the cluster for good.
func ForgetKept(ctx context.Context, cli *clientv3.Client, node string) error {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(cctx, keptPrefixOf(node), clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("forget the kept registrations of %s: %w", node, unavailable(err))
	}
	return nil
}

// KeptCount returns how many registrations node keeps for its restarts.
func KeptCount(ctx context.Context, cli *clientv3.Client, node string) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(cctx, keptPrefixOf(node), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, unavailable(err)
	}
	return resp.Count, nil
}
