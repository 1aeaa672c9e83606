package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// Maintenance mode (herd maint): the node as a whole, or its instances of
// a service, get no new requests from any gateway; in-flight requests
// finish and the registrations stay.
//
//   - The state is this node's: kept in its data dir (maintenance.json,
//     written and synced before the API answers), so a node rebooted in
//     maintenance comes back in maintenance, and its kept instances are
//     registered in maintenance from their first write.
//   - The registrar's Overlay sets Instance.Maintenance on every value the
//     node writes; Registrar.Reapply writes again, in a few transactions,
//     the instances a change concerns. Every catalog sees them from the
//     registry, and gateways skip them (gateway.classify).
//   - Gossip carries a summary (Meta.Maint) for herd members.
//   - A change the registry cannot take at once is saved, answered 503,
//     and applied by followMaint once the registry answers.
type maintState struct {
	path string
	mu   sync.Mutex
	cur  api.Maintenance
	kick chan struct{}
}

// maintFile keeps the node's maintenance state in its data dir.
const maintFile = "maintenance.json"

// loadMaint reads the maintenance state kept in dir. A file that does not
// decode stops the start: routing to a node its operator took out is
// worse than not starting.
func loadMaint(dir string) (*maintState, error) {
	m := &maintState{path: filepath.Join(dir, maintFile), kick: make(chan struct{}, 1)}
	b, err := os.ReadFile(m.path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the maintenance state: %w", err)
	}
	if err := json.Unmarshal(b, &m.cur); err != nil {
		return nil, fmt.Errorf("%s does not decode (fix or remove it; it says what of this node is in maintenance): %w", m.path, err)
	}
	return m, nil
}

// get returns a copy of the state.
func (m *maintState) get() api.Maintenance {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.cur
	if c.Node != nil {
		e := *c.Node
		c.Node = &e
	}
	c.Services = maps.Clone(c.Services)
	return c
}

// overlay is the registrar's Overlay.
func (m *maintState) overlay(in *api.Instance) {
	m.mu.Lock()
	in.Maintenance = m.cur.ReasonOf(in.Service)
	m.mu.Unlock()
}

// set turns the maintenance of service ("" for the node) on (e not nil) or
// off, and saves it; it reports whether anything changed. A failed save
// changes nothing.
func (m *maintState) set(service string, e *api.MaintEntry) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.cur
	next.Services = maps.Clone(m.cur.Services)
	switch {
	case service == "":
		if e == nil && next.Node == nil {
			return false, nil
		}
		next.Node = e
	case e == nil:
		if _, on := next.Services[service]; !on {
			return false, nil
		}
		delete(next.Services, service)
	default:
		if next.Services == nil {
			next.Services = map[string]api.MaintEntry{}
		}
		next.Services[service] = *e
	}
	if len(next.Services) == 0 {
		next.Services = nil
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return false, err
	}
	if err := secure.WriteSecretFile(m.path, b); err != nil {
		return false, fmt.Errorf("save the maintenance state: %w", err)
	}
	m.cur = next
	return true, nil
}

// errMaintPending: the maintenance change is saved, but the registry has
// not taken it yet.
var errMaintPending = errors.New("the change is saved on this node and applied once the registry takes it")

// SetMaintenance turns maintenance on (e not nil) or off for the node
// (service "") or its instances of service, and returns once every
// catalog can see it: the registry holds the instances' new values. When
// the registry cannot take them now, the change stays saved, followMaint
// applies it later, and the error wraps errMaintPending.
func (n *Node) SetMaintenance(ctx context.Context, service string, e *api.MaintEntry) error {
	changed, err := n.maint.set(service, e)
	if err != nil || !changed {
		return err
	}
	m := n.gossip.LocalMeta()
	m.Maint = n.maintSummary()
	if err := n.gossip.SetMeta(m); err != nil {
		n.logger.Warn("could not gossip the maintenance state", "err", err)
	}
	if _, err := n.registrar.Reapply(ctx); err != nil {
		select {
		case n.maint.kick <- struct{}{}:
		default:
		}
		return fmt.Errorf("%w: %w", errMaintPending, err)
	}
	return nil
}

// maintSummary is what gossip carries of the maintenance state.
func (n *Node) maintSummary() string {
	m := n.maint.get()
	return m.Summary(48)
}

// maintRetry spaces the attempts to apply a maintenance change the
// registry did not take.
const maintRetry = time.Second

// followMaint applies the maintenance changes the registry did not take
// at once, until they land or ctx ends. A lost lease needs nothing: the
// next lease writes every instance with the Overlay.
func (n *Node) followMaint(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.maint.kick:
		}
		for {
			_, err := n.registrar.Reapply(ctx)
			if err == nil || errors.Is(err, registry.ErrNoLease) || ctx.Err() != nil {
				break
			}
			n.logger.Warn("could not apply the maintenance state to the registry; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(maintRetry):
			}
		}
	}
}
