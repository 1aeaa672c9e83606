package registry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Shared holders of different keys proceed together; one key is held by
// one at a time; an exclusive holder waits for the shared ones, keeps new
// ones out while it waits, and gives up with its context.
func TestOpLock(t *testing.T) {
	l := newOpLock()
	ctx := context.Background()
	if err := l.lockShared(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := l.lockShared(ctx, "b"); err != nil {
		t.Fatal("a second key waited for the first")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := l.lockShared(short, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the same key twice: %v", err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := l.lock(short2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("exclusive while shared holders run: %v", err)
	}
	// An exclusive holder waiting keeps new shared ones out.
	var got atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.lock(ctx); err != nil {
			t.Error(err)
			return
		}
		got.Store(1)
		l.unlock()
	})
	waitFor(t, 5*time.Second, "the exclusive holder queued", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.queued == 1
	})
	short3, cancel3 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel3()
	if err := l.lockShared(short3, "c"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a new shared holder went before a waiting exclusive one: %v", err)
	}
	l.unlockShared("a", true)
	l.unlockShared("b", true)
	wg.Wait()
	if got.Load() != 1 {
		t.Fatal("the exclusive holder never ran")
	}
	if err := l.lockShared(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	l.unlockShared("a", true)
	if len(l.keys) != 0 || l.shared != 0 || l.alone || l.queued != 0 {
		t.Fatalf("left state: %+v", l)
	}
}
