package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
)

// Registrations made through the agent API are kept in the registry
// (registry/kept.go). Herd before that kept them in the data dir, in two
// files: instances.json (every kept instance, a JSON array) and
// instances.log (every change since, one JSON line each: {"put":
// {instance}} or {"delete": "service/id"}). A node that finds them moves
// what they hold into the registry once it holds a lease, then removes
// them, so an upgrade loses no registration.
const (
	legacyInstancesFile = "instances.json"
	legacyInstancesLog  = "instances.log"
)

type legacyLine struct {
	Put    *api.Instance `json:"put,omitempty"`
	Delete string        `json:"delete,omitempty"`
}

// loadLegacyKept reads the old files in dir: the snapshot, then the log
// replayed over it. A line that does not parse (the torn end of a write a
// crash cut short, never acknowledged) is skipped and counted.
func loadLegacyKept(dir string) (ins []api.Instance, skipped int, err error) {
	live := map[string]api.Instance{}
	b, err := os.ReadFile(filepath.Join(dir, legacyInstancesFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, 0, err
	default:
		var snap []api.Instance
		if err := json.Unmarshal(b, &snap); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", legacyInstancesFile, err)
		}
		for _, in := range snap {
			live[in.Service+"/"+in.ID] = in
		}
	}
	f, err := os.Open(filepath.Join(dir, legacyInstancesLog))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, 0, err
	default:
		defer f.Close()
		br := bufio.NewReader(f)
		for {
			line, rerr := br.ReadBytes('\n')
			if rerr != nil && rerr != io.EOF {
				return nil, skipped, fmt.Errorf("%s: %w", legacyInstancesLog, rerr)
			}
			var l legacyLine
			switch {
			case len(line) == 0:
			case rerr == io.EOF || json.Unmarshal(line, &l) != nil:
				skipped++ // no newline (never acknowledged) or garbled
			case l.Put != nil:
				live[l.Put.Service+"/"+l.Put.ID] = *l.Put
			case l.Delete != "":
				delete(live, l.Delete)
			default:
				skipped++
			}
			if rerr == io.EOF {
				break
			}
		}
	}
	keys := make([]string, 0, len(live))
	for k := range live {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ins = append(ins, live[k])
	}
	return ins, skipped, nil
}

// migrateLegacyKept moves the registrations of the old files into the
// registry (kept, as RegisterKept does) once the registrar holds a lease,
// MaxBatch to a transaction, then removes the files. What this run has
// registered since it started is left as it is; a key another node holds
// is dropped, with a warning. It retries until ctx ends while the registry
// cannot take the writes, and the files stay until everything is moved.
func (n *Node) migrateLegacyKept(ctx context.Context) {
	ins, skipped, err := loadLegacyKept(n.dir.path)
	if err != nil {
		n.logger.Error("cannot read the registrations kept in the data dir by an older herd; they stay there", "err", err)
		return
	}
	if skipped > 0 {
		n.logger.Warn("skipped lines of the old kept registrations' log that do not parse (a write cut short by a crash)", "file", legacyInstancesLog, "lines", skipped)
	}
	if len(ins) > 0 {
		n.logger.Info("moving the registrations kept in the data dir into the registry", "count", len(ins))
	}
	for len(ins) > 0 && n.registrar.LeaseID() == 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	for len(ins) > 0 {
		k := min(len(ins), registry.MaxBatch)
		err := n.adoptLegacy(ctx, ins[:k])
		if err == nil {
			ins = ins[k:]
			continue
		}
		if ctx.Err() != nil {
			return
		}
		n.logger.Warn("could not move kept registrations into the registry yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	for _, f := range []string{legacyInstancesFile, legacyInstancesLog} {
		if err := os.Remove(filepath.Join(n.dir.path, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			n.logger.Warn("could not remove an old kept registrations file", "file", f, "err", err)
		}
	}
}

// adoptLegacy registers ins (kept) in one transaction, or one by one when
// a key belongs to another node.
func (n *Node) adoptLegacy(ctx context.Context, ins []api.Instance) error {
	held := map[string]bool{}
	for _, in := range n.registrar.Instances() {
		held[in.Service+"/"+in.ID] = true
	}
	var todo []api.Instance
	for _, in := range ins {
		if !held[in.Service+"/"+in.ID] {
			todo = append(todo, in)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	err := n.registrar.Batch(ctx, slices.Clone(todo), nil)
	if !errors.Is(err, registry.ErrConflict) && !errors.Is(err, api.ErrInvalid) {
		return err
	}
	for _, in := range todo {
		err := n.registrar.RegisterKept(ctx, in)
		switch {
		case errors.Is(err, registry.ErrConflict), errors.Is(err, api.ErrInvalid):
			n.logger.Warn("dropping a kept registration from the data dir", "service", in.Service, "id", in.ID, "err", err)
		case err != nil:
			return err
		}
	}
	return nil
}
