package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/herdcluster/herd/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxBatch is the most changes one Batch makes: one registry transaction's
// worth (etcd's --max-txn-ops).
const MaxBatch = maxTxnOps

// txnOpsLimit is the most operations a transaction may carry on herd's
// members (etcd's --max-txn-ops; etcd's default is 128): a full batch
// writes two keys per change, and its compares and nested transactions
// count too.
const txnOpsLimit = 4 * MaxBatch

// ErrBatchTooLarge: a batch of more than MaxBatch changes.
var ErrBatchTooLarge = fmt.Errorf("a batch makes at most %d changes", MaxBatch)

// Ref names an instance.
type Ref struct{ Service, ID string }

// Batch registers reg (kept across restarts, as RegisterKept does) and
// deregisters dereg in one registry transaction: all of it happens or none
// of it. It fails with ErrConflict when a key belongs to another node,
// ErrNotFound when a deregistered instance is not this node's, and
// ErrInvalid (a *api.FieldError naming the entry) for a bad instance or a
// key named twice.
func (r *Registrar) Batch(ctx context.Context, reg []api.Instance, dereg []Ref) error {
	if len(reg)+len(dereg) > MaxBatch {
		return ErrBatchTooLarge
	}
	keys := make([]string, 0, len(reg)+len(dereg))
	seen := map[string]bool{}
	for i := range reg {
		in := &reg[i]
		r.overlay(in)
		if err := in.Validate(); err != nil {
			var fe *api.FieldError
			if errors.As(err, &fe) {
				return &api.FieldError{Field: fmt.Sprintf("register[%d].%s", i, fe.Field), Reason: fe.Reason}
			}
			return err
		}
		keys = append(keys, InstanceKey(in.Service, in.ID))
	}
	for i, d := range dereg {
		if err := api.ValidateName("service", d.Service); err != nil {
			return &api.FieldError{Field: fmt.Sprintf("deregister[%d].service", i), Reason: err.(*api.FieldError).Reason}
		}
		if err := api.ValidateName("id", d.ID); err != nil {
			return &api.FieldError{Field: fmt.Sprintf("deregister[%d].id", i), Reason: err.(*api.FieldError).Reason}
		}
		keys = append(keys, InstanceKey(d.Service, d.ID))
	}
	for i, k := range keys {
		if seen[k] {
			return &api.FieldError{Field: fmt.Sprintf("entry %d", i), Reason: fmt.Sprintf("%s is named twice in the batch", k[len(ServicesPrefix):])}
		}
		seen[k] = true
	}
	if len(keys) == 0 {
		return nil
	}
	if err := r.ops.lockSharedKeys(ctx, keys); err != nil {
		return fmt.Errorf("%w: waiting for another registry write: %w", ErrUnavailable, err)
	}
	defer func() {
		for k := range seen {
			r.ops.unlockShared(k, true)
		}
	}()
	for i := range reg {
		r.overlay(&reg[i]) // as register does, under the locks
	}
	lease := r.LeaseID()
	if lease == 0 {
		return ErrNoLease
	}
	if err := r.batchTxn(ctx, lease, reg, dereg, keys); err != nil {
		return err
	}
	r.mu.Lock()
	for _, in := range reg {
		k := InstanceKey(in.Service, in.ID)
		r.desired[k] = in
		delete(r.doubtful, k)
		r.kept[k] = true
	}
	for _, d := range dereg {
		k := InstanceKey(d.Service, d.ID)
		delete(r.desired, k)
		delete(r.doubtful, k)
		delete(r.kept, k)
	}
	r.mu.Unlock()
	for i := range reg {
		r.notify(reg[i].Service, reg[i].ID, &reg[i])
	}
	for _, d := range dereg {
		r.notify(d.Service, d.ID, nil)
	}
	return nil
}

// batchTxn writes the batch in one transaction, on the condition that no
// key changed since it was read; it reads again when one did. Each
// registration is kept for restarts and each deregistration forgets its
// kept copy in the same transaction (kept.go), so a batch is up to twice
// MaxBatch operations (the members allow txnOpsLimit).
func (r *Registrar) batchTxn(ctx context.Context, lease clientv3.LeaseID, reg []api.Instance, dereg []Ref, keys []string) error {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), r.cfg.RequestTimeout)
	defer cancel()
	for attempt := 0; attempt < 5; attempt++ {
		gets := make([]clientv3.Op, len(keys))
		for i, k := range keys {
			gets[i] = clientv3.OpGet(k)
		}
		read, err := r.cli.Txn(cctx).Then(gets...).Commit()
		if err != nil {
			return unavailable(err)
		}
		cmps := make([]clientv3.Cmp, 0, len(keys))
		ops := make([]clientv3.Op, 0, len(keys))
		for i, k := range keys {
			kvs := read.Responses[i].GetResponseRange().Kvs
			if i >= len(reg) { // a deregistration
				d := dereg[i-len(reg)]
				ops = append(ops, clientv3.OpDelete(keptKey(r.cfg.Node, d.Service, d.ID)))
				if len(kvs) == 0 {
					r.mu.Lock()
					_, held := r.desired[k]
					r.mu.Unlock()
					if !held {
						return fmt.Errorf("%s/%s: %w", d.Service, d.ID, ErrNotFound)
					}
					// Held but not in the registry now (the lease was
					// lost): nothing to delete, as long as it stays so.
					cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
					continue
				}
				if owner := ownerOf(kvs[0].Value); owner != r.cfg.Node {
					return fmt.Errorf("%s/%s is registered by node %q: %w", d.Service, d.ID, owner, ErrConflict)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", kvs[0].ModRevision))
				ops = append(ops, clientv3.OpDelete(k))
				continue
			}
			in := reg[i]
			if len(kvs) == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			} else {
				if owner := ownerOf(kvs[0].Value); owner != r.cfg.Node {
					return fmt.Errorf("%s/%s is registered by node %q: %w", in.Service, in.ID, owner, ErrConflict)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", kvs[0].ModRevision))
			}
			val, err := json.Marshal(in)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(k, string(val), clientv3.WithLease(lease)),
				clientv3.OpPut(keptKey(r.cfg.Node, in.Service, in.ID), string(val)))
		}
		txn, err := r.cli.Txn(cctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			// Unknown outcome: the registrations may have landed.
			r.mu.Lock()
			for _, in := range reg {
				if val, merr := json.Marshal(in); merr == nil {
					r.doubtful[InstanceKey(in.Service, in.ID)] = string(val)
				}
			}
			r.mu.Unlock()
			return unavailable(err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("the batch's instances kept changing while it was written; try again: %w", ErrConflict)
}

// ownerOf is the node an instance's registry value names ("" if it does
// not decode).
func ownerOf(v []byte) string {
	var cur api.Instance
	if json.Unmarshal(v, &cur) != nil {
		return ""
	}
	return cur.Node
}
