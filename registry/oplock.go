package registry

import (
	"context"
	"slices"
	"sync"
)

// opLock orders the registrar's registry writes. Registrations and
// deregistrations share it, so they proceed concurrently (etcd batches
// them); a lease change (granting a lease and writing every instance under
// it) and the clean-up of doubtful writes take it alone, so no instance is
// written under a lease the registrar has given up once the rest moved to
// the new one. A waiting exclusive holder goes before shared ones that come
// after it. Every wait honours its context. On top of that, one key is
// written by one operation at a time (keyLock), so the registry, the
// registrar's maps and the store agree on the order of changes to it.
type opLock struct {
	mu       sync.Mutex
	shared   int
	alone    bool
	queued   int           // exclusive holders waiting
	released chan struct{} // closed and replaced at every release
	keys     map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // one slot
	refs int
}

func newOpLock() *opLock {
	return &opLock{released: make(chan struct{}), keys: map[string]*keyLock{}}
}

// wait blocks until the next release or ctx is done. Called with mu held;
// returns with it held.
func (l *opLock) wait(ctx context.Context) error {
	ch := l.released
	l.mu.Unlock()
	select {
	case <-ch:
		l.mu.Lock()
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		return ctx.Err()
	}
}

func (l *opLock) release() {
	close(l.released)
	l.released = make(chan struct{})
}

// lockShared takes the lock shared, and key alone.
func (l *opLock) lockShared(ctx context.Context, key string) error {
	l.mu.Lock()
	for l.alone || l.queued > 0 {
		if err := l.wait(ctx); err != nil {
			l.mu.Unlock()
			return err
		}
	}
	return l.takeKey(ctx, key)
}

// lockSharedKeys takes the lock shared and every key of keys alone, in
// sorted order (so two batches never wait for each other's keys). Each key
// counts as a shared holder: unlockShared releases them one by one.
func (l *opLock) lockSharedKeys(ctx context.Context, keys []string) error {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	for i, k := range keys {
		var err error
		if i == 0 {
			err = l.lockShared(ctx, k)
		} else {
			l.mu.Lock()
			err = l.takeKey(ctx, k) // shared already: no wait for an exclusive one
		}
		if err != nil {
			for _, held := range keys[:i] {
				l.unlockShared(held, true)
			}
			return err
		}
	}
	return nil
}

// takeKey counts one more shared holder and takes key's slot. Called with
// mu held; it unlocks it.
func (l *opLock) takeKey(ctx context.Context, key string) error {
	l.shared++
	k := l.keys[key]
	if k == nil {
		k = &keyLock{ch: make(chan struct{}, 1)}
		l.keys[key] = k
	}
	k.refs++
	l.mu.Unlock()
	select {
	case k.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		l.unlockShared(key, false)
		return ctx.Err()
	}
}

// unlockShared releases what lockShared took (held: the key's slot too).
func (l *opLock) unlockShared(key string, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.keys[key]
	if held {
		<-k.ch
	}
	if k.refs--; k.refs == 0 {
		delete(l.keys, key)
	}
	l.shared--
	l.release()
}

// lock takes the lock alone.
func (l *opLock) lock(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queued++
	defer func() { l.queued-- }()
	for l.alone || l.shared > 0 {
		if err := l.wait(ctx); err != nil {
			l.release() // shared holders held back by this one may go
			return err
		}
	}
	l.alone = true
	return nil
}

func (l *opLock) unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.alone = false
	l.release()
}
