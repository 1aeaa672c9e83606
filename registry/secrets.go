package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// secretsPrefix holds the cluster's identity material: the CA key, the join
// secret, the gossip keyring. Only a client with a cluster certificate can
// reach the registry at all, and the catalog never reads this prefix.
const secretsPrefix = "/herd/secure/"

// Secrets reads and writes the cluster's identity material in the
// registry. The values are opaque here: the node encodes them. Safe for
// concurrent use.
type Secrets struct{ cli *clientv3.Client }

// NewSecrets returns the secrets kept through cli.
func NewSecrets(cli *clientv3.Client) *Secrets { return &Secrets{cli: cli} }

// ErrNoSecret: the registry holds no value of that name.
var ErrNoSecret = errors.New("the registry holds no such value")

// Get reads name linearizably; ErrNoSecret when it is absent.
func (s *Secrets) Get(ctx context.Context, name string) ([]byte, int64, error) {
	resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.GetResponse, error) {
		return s.cli.Get(c, secretsPrefix+name)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read %s from the registry: %w", name, unavailable(err))
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, ErrNoSecret
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// Create writes name only if it is absent and reports whether it wrote.
func (s *Secrets) Create(ctx context.Context, name string, v []byte) (bool, error) {
	key := secretsPrefix + name
	resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.TxnResponse, error) {
		return s.cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(v))).Commit()
	})
	if err != nil {
		return false, fmt.Errorf("write %s to the registry: %w", name, unavailable(err))
	}
	return resp.Succeeded, nil
}

// Put replaces name if its value was last written at rev (0: whatever it
// holds), and reports whether it wrote.
func (s *Secrets) Put(ctx context.Context, name string, v []byte, rev int64) (bool, error) {
	key := secretsPrefix + name
	txn := func(c context.Context) (*clientv3.TxnResponse, error) {
		t := s.cli.Txn(c)
		if rev != 0 {
			t = t.If(clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		}
		return t.Then(clientv3.OpPut(key, string(v))).Commit()
	}
	resp, err := withTimeout(ctx, 5*time.Second, txn)
	if err != nil {
		return false, fmt.Errorf("write %s to the registry: %w", name, unavailable(err))
	}
	return resp.Succeeded, nil
}

// Follow calls f with name's value now and after every change, until ctx
// is done. A broken watch is re-read and watched again; f is not called
// when the value is absent. f runs on Follow's goroutine.
func (s *Secrets) Follow(ctx context.Context, name string, f func([]byte)) {
	key := secretsPrefix + name
	var last []byte
	seen := false
	deliver := func(v []byte) {
		if !seen || string(v) != string(last) {
			seen, last = true, v
			f(v)
		}
	}
	for ctx.Err() == nil {
		v, rev, err := s.Get(ctx, name)
		switch {
		case err == nil:
			deliver(v)
		case !errors.Is(err, ErrNoSecret):
			if sleepCtx(ctx, time.Second) != nil {
				return
			}
			continue
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range s.cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					deliver(ev.Kv.Value)
				}
			}
		}
		cancel()
		if sleepCtx(ctx, time.Second) != nil {
			return
		}
	}
}
