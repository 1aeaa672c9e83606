package registry

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter"
)

// A voter's registry client talks to its own member only (the node's
// endpoints are that member's URL), over mutual TLS and gRPC on loopback:
// every registration is marshalled, encrypted, sent, decrypted and
// unmarshalled twice on the same machine, through etcd's gRPC-over-HTTP/2
// server. LocalClient skips that hop for the key-value calls (the write
// path of registrations) while the member is a voter with a leader: the
// same calls, made to the member in-process (etcd's v3client adapter, the
// quota and transaction-size checks included). Otherwise (a spare, a
// learner, no leader, a member stopped) they go over the network as
// before, where the node's client reports what is wrong (ErrNoLeader, a
// learner's refusal). Leases and watches always go over the network: their
// streams and the watch's leader checks are etcd's gRPC server's.

// LocalClient returns a client that shares cli's leases, watches and
// cluster calls and routes its key-value calls as above; member returns
// the node's member (nil on a spare). It must not be closed: cli is.
func LocalClient(cli *clientv3.Client, member func() *Member) *clientv3.Client {
	c := clientv3.NewCtxClient(context.Background())
	c.Cluster, c.Lease, c.Watcher, c.Auth, c.Maintenance = cli.Cluster, cli.Lease, cli.Watcher, cli.Auth, cli.Maintenance
	c.KV = routedKV{KV: cli.KV, member: member}
	return c
}

// routedKV is the network client's KV (what it does not route: streamed
// reads), but for the calls it routes.
type routedKV struct {
	clientv3.KV
	member func() *Member
}

func (k routedKV) pick() clientv3.KV {
	if m := k.member(); m != nil {
		if kv := m.localKV(); kv != nil {
			return kv
		}
	}
	return k.KV
}

func (k routedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return k.pick().Put(ctx, key, val, opts...)
}

func (k routedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return k.pick().Get(ctx, key, opts...)
}

func (k routedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return k.pick().Delete(ctx, key, opts...)
}

func (k routedKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return k.pick().Compact(ctx, rev, opts...)
}

func (k routedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	return k.pick().Do(ctx, op)
}

func (k routedKV) Txn(ctx context.Context) clientv3.Txn { return k.pick().Txn(ctx) }

// localKV returns the in-process key-value client while the member is a
// running voter that knows a leader, nil otherwise.
func (m *Member) localKV() clientv3.KV {
	s := m.etcd.Server
	select {
	case <-s.StopNotify():
		return nil
	default:
	}
	if s.Leader() == 0 || m.IsLearner() || !s.IsMemberExist(s.MemberID()) {
		return nil
	}
	m.kvOnce.Do(func() {
		m.kv = clientv3.NewKVFromKVClient(adapter.KvServerToKvClient(v3rpc.NewQuotaKVServer(s)), nil)
	})
	return m.kv
}
