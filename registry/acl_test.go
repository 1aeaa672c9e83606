package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// tokenView is what FollowTokens last handed over.
type tokenView struct {
	mu     sync.Mutex
	tokens map[string][]byte
	synced bool
}

func (v *tokenView) has(name, value string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	got, ok := v.tokens[name]
	return ok && string(got) == value
}

func (v *tokenView) len() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.tokens)
}

func followTokens(t *testing.T, cli *clientv3.Client) *tokenView {
	t.Helper()
	v := &tokenView{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		NewACL(cli).FollowTokens(ctx, testLogger(t), func(m map[string][]byte, _ int64) {
			v.mu.Lock()
			v.tokens = m
			v.mu.Unlock()
		}, func(synced bool, _ string) {
			v.mu.Lock()
			v.synced = synced
			v.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return v
}

// Tokens: created once per name, deleted, bootstrapped once (a reset
// replaces the management token), and mirrored by FollowTokens, which
// lists again after a compaction it missed while cut off.
func TestACLTokens(t *testing.T) {
	m, cli := startSingle(t)
	ctx := context.Background()
	a := NewACL(cli)
	if _, err := a.Create(ctx, "ci", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(ctx, "ci", []byte("v2")); !errors.Is(err, ErrTokenExists) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := a.Delete(ctx, "nope"); !errors.Is(err, ErrNoToken) {
		t.Fatalf("delete of a missing token: %v", err)
	}
	if _, err := a.Bootstrap(ctx, "bootstrap", []byte("b1"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Bootstrap(ctx, "bootstrap", []byte("b2"), false); !errors.Is(err, ErrBootstrapped) {
		t.Fatalf("second bootstrap: %v", err)
	}
	// Even once the management token was revoked: no second bootstrap.
	if _, err := a.Delete(ctx, "bootstrap"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Bootstrap(ctx, "bootstrap", []byte("b2"), false); !errors.Is(err, ErrBootstrapped) {
		t.Fatalf("bootstrap after revoking the management token: %v", err)
	}
	if _, err := a.Bootstrap(ctx, "bootstrap", []byte("b3"), true); err != nil {
		t.Fatalf("reset: %v", err)
	}
	if ok, err := a.DeleteIf(ctx, "bootstrap", []byte("b2")); err != nil || ok {
		t.Fatalf("DeleteIf with a stale value: %v %v", ok, err)
	}
	if _, err := a.Create(ctx, "old", []byte("o")); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.DeleteIf(ctx, "old", []byte("o")); err != nil || !ok {
		t.Fatalf("DeleteIf: %v %v", ok, err)
	}
	all, err := a.List(ctx)
	if err != nil || len(all) != 2 || string(all["bootstrap"]) != "b3" || string(all["ci"]) != "v1" {
		t.Fatalf("list: %v %q", err, all)
	}

	proxy := newTCPProxy(t, m.ClientURL()[len("https://"):])
	v := followTokens(t, newTestClient(t, "https://"+proxy.addr()))
	waitFor(t, 5*time.Second, "the mirror listing both", func() bool { return v.has("ci", "v1") && v.has("bootstrap", "b3") })
	if _, err := a.Delete(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the mirror dropping the revoked token", func() bool { return v.len() == 1 })

	proxy.setCut(true)
	waitFor(t, 10*time.Second, "the mirror noticing the cut", func() bool { v.mu.Lock(); defer v.mu.Unlock(); return !v.synced })
	if _, err := a.Bootstrap(ctx, "bootstrap", []byte("b4"), true); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		name := fmt.Sprintf("churn-%d", i)
		if _, err := a.Create(ctx, name, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Create(ctx, "new", []byte("n")); err != nil {
		t.Fatal(err)
	}
	compactAll(t, cli)
	if !v.has("bootstrap", "b3") {
		t.Fatal("the mirror dropped its last set while cut off")
	}
	proxy.setCut(false)
	waitFor(t, 15*time.Second, "the mirror converging after the compaction", func() bool {
		return v.has("bootstrap", "b4") && v.has("new", "n") && v.len() == 2
	})
}
