package registry

import (
	"context"
	"encoding/json"
	"fmt"

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
	in = in.Clone()
	if !mutate(&in) {
		return nil
	}
	r.overlay(&in)
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

// overlay makes in this node's: its name, the node's Overlay, the derived
// fields (Normalize).
func (r *Registrar) overlay(in *api.Instance) {
	in.Node = r.cfg.Node
	if r.cfg.Overlay != nil {
		r.cfg.Overlay(in)
	}
	in.Normalize()
}

// Reapply writes again, in a few transactions, every instance this
// registrar holds whose value the Overlay now changes (maintenance turned
// on or off): it returns once the registry holds them all, or with the
// first failure (ErrUnavailable: call it again; what was written stays).
// Without a lease it writes nothing: the next lease writes every instance
// with the Overlay applied.
func (r *Registrar) Reapply(ctx context.Context) (int, error) {
	if err := r.lock(ctx); err != nil {
		return 0, err
	}
	defer r.unlock()
	r.mu.Lock()
	lease := r.lease
	var changed []api.Instance
	for _, in := range r.desired {
		next := in.Clone()
		r.overlay(&next)
		if !sameValue(in, next) {
			changed = append(changed, next)
		}
	}
	r.mu.Unlock()
	if len(changed) == 0 {
		return 0, nil
	}
	if lease == 0 {
		return 0, ErrNoLease
	}
	conflicts, err := r.putMany(ctx, lease, changed)
	if err != nil {
		return 0, err
	}
	lost := map[string]bool{}
	for _, c := range conflicts {
		// Another node took the key after this node's lease was lost:
		// the next lease's registration finds it so and drops it.
		lost[InstanceKey(c.in.Service, c.in.ID)] = true
	}
	r.mu.Lock()
	for _, in := range changed {
		k := InstanceKey(in.Service, in.ID)
		if _, still := r.desired[k]; still && !lost[k] {
			r.desired[k] = in
		}
	}
	r.mu.Unlock()
	return len(changed) - len(lost), nil
}

// sameValue reports whether a and b encode alike.
func sameValue(a, b api.Instance) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

// notify tells the registrar's OnChange of a change of the instances it
// holds (nil: removed). Called without r.mu.
func (r *Registrar) notify(service, id string, in *api.Instance) {
	if r.cfg.OnChange == nil {
		return
	}
	if in != nil {
		c := in.Clone()
		in = &c
	}
	r.cfg.OnChange(service, id, in)
}
