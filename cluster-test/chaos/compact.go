package chaos

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// compactEvery is how often the run compacts the registry. herd compacts
// every 10 minutes; the suite does it far more often so that catalogs and
// watches have to resume across compactions while faults are on.
const compactEvery = 10 * time.Second

// compact compacts the registry at its current revision every compactEvery
// through the etcd client port of a node no fault targets, until ctx ends.
func (r *Run) compact(ctx context.Context) {
	tick := time.NewTicker(compactEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var eps []string
		for _, n := range r.healthy() {
			eps = append(eps, "https://"+n.IP+":2379")
		}
		if len(eps) == 0 {
			continue
		}
		cli, err := r.C.registryClient(eps)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := cli.Get(cctx, "/herd/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil {
			if _, err = cli.Compact(cctx, resp.Header.Revision); err == nil {
				r.TL.Add("compacted the registry at revision %d", resp.Header.Revision)
			}
		}
		cancel()
		cli.Close()
	}
}
