package registry

import (
	"context"
	"fmt"
	"testing"

	"github.com/herdcluster/herd/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A catalog's re-list (after its watch revision was compacted, its watch
// broke or went silent, or the leader was lost) with 10,000 instances in
// 200 services, against its floor: the same linearizable range read of
// the prefix, raw, through the same client (the re-list adds decoding
// every instance and sorting each service). On one real member.
func BenchmarkCatalogRelist10k(b *testing.B) {
	_, cli := startSingle(b)
	ctx := context.Background()
	ops := make([]clientv3.Op, 0, maxTxnOps)
	flush := func() {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range 10000 {
		in := instance(fmt.Sprintf("svc-%03d", i%200), fmt.Sprintf("i%05d", i), 2000+i%1000)
		in.Node = fmt.Sprintf("node%d", i%25)
		in.Normalize()
		ops = append(ops, clientv3.OpPut(InstanceKey(in.Service, in.ID), mustJSON(b, in)))
		if len(ops) == maxTxnOps {
			flush()
		}
	}
	flush()
	c := NewCatalog(cli, 0, nil)
	f := &follower{cli: cli, name: "catalog", prefix: ServicesPrefix, m: catalogMirror{c}}
	b.Run("raw-range", func(b *testing.B) {
		for range b.N {
			resp, err := cli.Get(ctx, ServicesPrefix, clientv3.WithPrefix())
			if err != nil || len(resp.Kvs) != 10000 {
				b.Fatal(err)
			}
		}
	})
	b.Run("relist", func(b *testing.B) {
		for range b.N {
			if _, err := f.list(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if k := len(c.Services()); k != 200 {
			b.Fatalf("%d services after the re-list", k)
		}
	})
}

// A catalog applying a watch batch of a few changes to one service of 1,000
// instances (the shape of a service whose instances re-register or change
// health in a stream), against its floor: copying the service's slice,
// which an immutable snapshot has to do once per batch.
func BenchmarkCatalogMerge1k(b *testing.B) {
	old := make([]api.Instance, 1000)
	for i := range old {
		old[i] = instance("big", fmt.Sprintf("i%05d", i), 2000+i)
		old[i].Normalize()
	}
	changes := map[string]*api.Instance{}
	for i := 0; i < 1000; i += 100 {
		in := old[i]
		in.Port++
		changes[in.ID] = &in
	}
	b.Run("copy", func(b *testing.B) {
		for range b.N {
			next := make([]api.Instance, len(old))
			copy(next, old)
		}
	})
	b.Run("merged", func(b *testing.B) {
		for range b.N {
			if len(merged(old, changes)) != len(old) {
				b.Fatal("lost instances")
			}
		}
	})
}
