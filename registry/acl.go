package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The agent API's tokens live under aclTokensPrefix, one key per token
// name; the values (the node's encoding, hashes and never secrets) are
// opaque here. aclBootstrapKey records that the cluster's first
// management token was made: after that no node makes one by itself
// again, whatever its data dir holds (only an explicit reset does).
const (
	aclTokensPrefix = "/herd/acl/tokens/"
	aclBootstrapKey = "/herd/acl/bootstrapped"
)

// ACL errors.
var (
	// ErrTokenExists: a token of that name exists.
	ErrTokenExists = errors.New("a token of that name exists")
	// ErrNoToken: no token of that name exists.
	ErrNoToken = errors.New("no token of that name")
	// ErrBootstrapped: the cluster's first management token was made
	// already.
	ErrBootstrapped = errors.New("the cluster's ACLs were bootstrapped already")
)

// ACL reads and writes the API tokens in the registry. Safe for concurrent
// use.
type ACL struct{ cli *clientv3.Client }

// NewACL returns the token store reached through cli.
func NewACL(cli *clientv3.Client) *ACL { return &ACL{cli: cli} }

const aclTimeout = 5 * time.Second

// Create writes token name with value v, only if no token has that name,
// and returns the registry revision of the write.
func (a *ACL) Create(ctx context.Context, name string, v []byte) (int64, error) {
	key := aclTokensPrefix + name
	resp, err := withTimeout(ctx, aclTimeout, func(c context.Context) (*clientv3.TxnResponse, error) {
		return a.cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(v))).Commit()
	})
	if err != nil {
		return 0, fmt.Errorf("write token %s: %w", name, unavailable(err))
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("token %q: %w", name, ErrTokenExists)
	}
	return resp.Header.Revision, nil
}

// Delete removes token name and returns the revision of the delete.
func (a *ACL) Delete(ctx context.Context, name string) (int64, error) {
	resp, err := withTimeout(ctx, aclTimeout, func(c context.Context) (*clientv3.DeleteResponse, error) {
		return a.cli.Delete(c, aclTokensPrefix+name)
	})
	if err != nil {
		return 0, fmt.Errorf("delete token %s: %w", name, unavailable(err))
	}
	if resp.Deleted == 0 {
		return 0, fmt.Errorf("token %q: %w", name, ErrNoToken)
	}
	return resp.Header.Revision, nil
}

// DeleteIf removes token name if it still holds v (another node may have
// removed or replaced it meanwhile), and reports whether it did.
func (a *ACL) DeleteIf(ctx context.Context, name string, v []byte) (bool, error) {
	key := aclTokensPrefix + name
	resp, err := withTimeout(ctx, aclTimeout, func(c context.Context) (*clientv3.TxnResponse, error) {
		return a.cli.Txn(c).If(clientv3.Compare(clientv3.Value(key), "=", string(v))).Then(clientv3.OpDelete(key)).Commit()
	})
	if err != nil {
		return false, fmt.Errorf("delete token %s: %w", name, unavailable(err))
	}
	return resp.Succeeded, nil
}

// List reads every token linearizably: name -> value.
func (a *ACL) List(ctx context.Context) (map[string][]byte, error) {
	resp, err := withTimeout(ctx, aclTimeout, func(c context.Context) (*clientv3.GetResponse, error) {
		return a.cli.Get(c, aclTokensPrefix, clientv3.WithPrefix())
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", unavailable(err))
	}
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), aclTokensPrefix)] = kv.Value
	}
	return out, nil
}

// Bootstrap writes the management token name with value v and marks the
// cluster bootstrapped, in one transaction, and returns its revision. Without reset it only does so
// when the cluster was never bootstrapped (ErrBootstrapped otherwise);
// with reset it replaces whatever token had that name (the old one stops
// working at once) and works whatever came before.
func (a *ACL) Bootstrap(ctx context.Context, name string, v []byte, reset bool) (int64, error) {
	key := aclTokensPrefix + name
	mark := clientv3.OpPut(aclBootstrapKey, time.Now().UTC().Format(time.RFC3339))
	resp, err := withTimeout(ctx, aclTimeout, func(c context.Context) (*clientv3.TxnResponse, error) {
		t := a.cli.Txn(c)
		if !reset {
			t = t.If(clientv3.Compare(clientv3.CreateRevision(aclBootstrapKey), "=", 0))
		}
		return t.Then(clientv3.OpPut(key, string(v)), mark).Commit()
	})
	if err != nil {
		return 0, fmt.Errorf("write the management token: %w", unavailable(err))
	}
	if !resp.Succeeded {
		return 0, ErrBootstrapped
	}
	return resp.Header.Revision, nil
}

// FollowTokens keeps f up to date with every token (name -> value) until
// ctx is done: f gets the whole set after the first list and after every
// change, and state whether the watch is live. A compaction or a broken
// watch lists again. Both run on FollowTokens' goroutine.
func (a *ACL) FollowTokens(ctx context.Context, logger *slog.Logger, f func(tokens map[string][]byte, rev int64), state func(synced bool, reason string)) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &tokenMirror{f: f, st: state}
	(&follower{cli: a.cli, name: "token", prefix: aclTokensPrefix, staleAfter: DefaultStaleAfter, logger: logger.With("component", "acl"), m: m}).run(ctx)
}

// tokenMirror is the token prefix as a map, handed over whole on every
// change (tokens are few; the copy keeps every handed-over map immutable).
type tokenMirror struct {
	cur map[string][]byte
	rev int64
	f   func(map[string][]byte, int64)
	st  func(bool, string)
}

func (m *tokenMirror) listed(kvs []*mvccpb.KeyValue, rev int64) {
	cur := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		cur[strings.TrimPrefix(string(kv.Key), aclTokensPrefix)] = kv.Value
	}
	m.cur, m.rev = cur, rev
	m.f(cur, rev)
}

func (m *tokenMirror) events(evs []*clientv3.Event) {
	var next map[string][]byte
	for _, ev := range evs {
		if ev.Kv.ModRevision <= m.rev {
			continue // already listed
		}
		if next == nil {
			next = maps.Clone(m.cur)
		}
		name := strings.TrimPrefix(string(ev.Kv.Key), aclTokensPrefix)
		if ev.Type == mvccpb.DELETE {
			delete(next, name)
		} else {
			next[name] = ev.Kv.Value
		}
		m.rev = max(m.rev, ev.Kv.ModRevision)
	}
	if next != nil {
		m.cur = next
		m.f(next, m.rev)
	}
}

func (m *tokenMirror) progress(rev int64)               { m.rev = max(m.rev, rev) }
func (m *tokenMirror) state(synced bool, reason string) { m.st(synced, reason) }
