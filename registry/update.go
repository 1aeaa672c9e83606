package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/herdcluster/herd/api"
)

// Update changes an instance this registrar holds in place: mutate gets a
// copy of it and returns whether it changed anything; a change is written
// under the node's lease (the instance key only: the kept copy holds the
// registration as made, so a restarted node starts its checks from their
// declared initial status). It is how the node writes check status
// transitions and maintenance: one write per change, never per check run.
// ErrNotFound when the registrar does not hold the instance (it was
// deregistered meanwhile); ErrNoLease, ErrUnavailable as for Register.
func (r *Registrar) Update(ctx context.Context, service, id string, mutate func(*api.Instance) bool) error {
	key := InstanceKey(service, id)
	if err := r.lockKey(ctx, key); err != nil {
		return err
	}
	defer r.unlockKey(key)
	r.mu.Lock()
	in, held := r.desired[key]
	lease := r.lease
	r.mu.Unlock()
	if !held {
		return fmt.Errorf("%s/%s: %w", service, id, ErrNotFound)
	}
	in = cloneInstance(in)
	if !mutate(&in) {
		return nil
	}
	in.Node = r.cfg.Node
	in.Normalize()
	if err := in.Validate(); err != nil {
		return err
	}
	if lease == 0 {
		return ErrNoLease
	}
	val, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode instance: %w", err)
	}
	// A failed write changes nothing here: the caller tries again (the
	// instance stays registered either way, so an update that landed
	// unbeknown to us is no harm, and is written again).
	if err := r.put(ctx, lease, in, string(val), nil); err != nil {
		return err
	}
	r.mu.Lock()
	if _, still := r.desired[key]; still {
		r.desired[key] = in
	}
	r.mu.Unlock()
	return nil
}

// notify tells the registrar's OnChange of a change of the instances it
// holds (nil: removed). Called without r.mu.
func (r *Registrar) notify(service, id string, in *api.Instance) {
	if r.cfg.OnChange == nil {
		return
	}
	if in != nil {
		c := cloneInstance(*in)
		in = &c
	}
	r.cfg.OnChange(service, id, in)
}

// cloneInstance copies in deeply enough that the copy's slices and map can
// be changed.
func cloneInstance(in api.Instance) api.Instance {
	in.Checks, in.Tags, in.Meta = slices.Clone(in.Checks), slices.Clone(in.Tags), maps.Clone(in.Meta)
	return in
}
