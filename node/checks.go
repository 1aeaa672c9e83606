package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/health"
	"github.com/herdcluster/herd/registry"
)

// The node runs the checks of the instances it owns (health.Runner) and
// writes their status changes to the registry; every catalog, and so every
// gateway, sees an instance's health from there.
//
//   - The registrar tells the runner of every instance it starts or stops
//     holding (RegistrarConfig.OnChange): a registration through the API, a
//     batch, a built-in service, the kept registrations read at start.
//   - The runner says which instance changed status (OnChange); a writer
//     goroutine puts the new statuses into the instance's registry value
//     (Registrar.Update), a few at a time, and tries again after a failure
//     until the write lands or the instance is gone. Marks coalesce: a
//     check that changes twice before its write is written once.
//   - A check critical for its deregister_critical_after deregisters the
//     instance (OnExpire), as an audit-logged change by the node.
type checkState struct {
	runner *health.Runner
	mu     sync.Mutex
	dirty  map[[2]string]bool // service, id
	kick   chan struct{}
	// written and failed count the status writes, for /metrics.
	written, failed atomic.Int64
}

// checkWriters bounds the status writes in flight.
const checkWriters = 8

// checkRetry spaces the attempts of a status write that failed.
const checkRetry = 500 * time.Millisecond

func (n *Node) newChecks() {
	n.checks = &checkState{dirty: map[[2]string]bool{}, kick: make(chan struct{}, 1)}
	n.checks.runner = health.New(health.Config{
		TLS:      n.clientTLS(),
		Logger:   n.logger,
		OnChange: n.checks.mark,
		OnExpire: func(service, id, check string) {
			n.goBackground(func(ctx context.Context) { n.expireInstance(ctx, service, id, check) })
		},
	})
}

// instanceChanged is the registrar's OnChange.
func (n *Node) instanceChanged(service, id string, in *api.Instance) {
	if in == nil {
		n.checks.runner.Remove(service, id)
		return
	}
	n.checks.runner.Set(*in)
}

func (c *checkState) mark(service, id string) {
	c.mu.Lock()
	c.dirty[[2]string{service, id}] = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *checkState) take() [][2]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([][2]string, 0, len(c.dirty))
	for k := range c.dirty {
		out = append(out, k)
	}
	clear(c.dirty)
	return out
}

// writeCheckStatus writes the marked instances' statuses until ctx ends.
func (n *Node) writeCheckStatus(ctx context.Context) {
	c := n.checks
	retry := time.NewTimer(0)
	<-retry.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-retry.C:
		}
		todo := c.take()
		sem := make(chan struct{}, checkWriters)
		var wg sync.WaitGroup
		var failed sync.Once
		for _, k := range todo {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := n.writeStatus(ctx, k[0], k[1]); err != nil {
					c.failed.Add(1)
					c.mu.Lock()
					c.dirty[k] = true
					c.mu.Unlock()
					failed.Do(func() {
						n.logger.Warn("could not write a check status change to the registry; retrying", "service", k[0], "id", k[1], "err", err)
					})
				}
			})
		}
		wg.Wait()
		c.mu.Lock()
		pending := len(c.dirty) > 0
		c.mu.Unlock()
		if pending && ctx.Err() == nil {
			retry.Reset(checkRetry)
		}
	}
}

// writeStatus puts the runner's statuses of service/id into its registry
// value, if they differ. An instance gone meanwhile is no failure.
func (n *Node) writeStatus(ctx context.Context, service, id string) error {
	changed := false
	err := n.registrar.Update(ctx, service, id, func(in *api.Instance) bool {
		cs, ok := n.checks.runner.Checks(service, id)
		changed = ok && applyStatuses(in, cs)
		return changed
	})
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err == nil && changed {
		n.checks.written.Add(1)
	}
	return err
}

// applyStatuses copies the status of every check of cs into the same check
// of in, and reports whether any changed.
func applyStatuses(in *api.Instance, cs []api.Check) bool {
	changed := false
	for i := range in.Checks {
		for _, c := range cs {
			if c.Name == in.Checks[i].Name && c.SameDefinition(in.Checks[i]) && (c.Status != in.Checks[i].Status || !c.Since.Equal(in.Checks[i].Since)) {
				in.Checks[i].Status, in.Checks[i].Output, in.Checks[i].Since = c.Status, c.Output, c.Since
				changed = true
			}
		}
	}
	return changed
}

// expireInstance deregisters service/id, whose check has been critical for
// its deregister_critical_after.
func (n *Node) expireInstance(ctx context.Context, service, id, check string) {
	err := n.registrar.Deregister(ctx, service, id)
	switch {
	case err == nil:
		n.acls.changes[actDeregister].Add(1)
		n.logger.Info("instance deregistered: a check was critical for its deregister_critical_after",
			"component", "acl", "action", actionNames[actDeregister], "target", service+"/"+id, "caller", "node", "check", check)
	case errors.Is(err, registry.ErrNotFound):
	default:
		n.logger.Warn("could not deregister an instance critical for its deregister_critical_after", "service", service, "id", id, "check", check, "err", err)
	}
}

// prepareChecks readies a registration's checks: the node alone sets
// their output and time, their defaults are filled, and checks the node
// runs unchanged keep their current status (registering an instance again
// does not reset it to critical).
func (n *Node) prepareChecks(in *api.Instance) {
	for i := range in.Checks {
		in.Checks[i].Output, in.Checks[i].Since = "", time.Time{}
	}
	in.Node = n.cfg.Name
	in.Normalize()
	n.checks.runner.Carry(in)
}
