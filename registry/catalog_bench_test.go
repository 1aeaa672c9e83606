package registry

import (
	"context"
	"fmt"
	"testing"

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
