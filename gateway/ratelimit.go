package gateway

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// limiter is a token bucket per client IP. Buckets live in shards, each
// with its own mutex, so clients do not contend on one lock; idle buckets
// are dropped as the shard is swept on insert, so the table stays bounded
// without a goroutine of its own.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	seed  maphash.Seed
	shard [64]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds each shard; past it the oldest idle buckets are swept.
const maxBuckets = 4096

func newLimiter(rate float64, burst int) *limiter {
	b := float64(burst)
	if b <= 0 {
		b = max(1, rate)
	}
	l := &limiter{rate: rate, burst: b, seed: maphash.MakeSeed()}
	for i := range l.shard {
		l.shard[i].buckets = map[netip.Addr]*bucket{}
	}
	return l
}

// allow takes a token for ip; when there is none it says how long until
// there will be one.
func (l *limiter) allow(ip netip.Addr) (time.Duration, bool) {
	if ip.Is6() && !ip.Is4In6() {
		// One IPv6 client usually holds a whole /64: count it as one.
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	b := ip.As16()
	sh := &l.shard[maphash.Bytes(l.seed, b[:])%uint64(len(l.shard))]
	now := time.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	bk, ok := sh.buckets[ip]
	if !ok {
		if (len(sh.buckets) >= maxBuckets && now.Sub(sh.sweep) > time.Second) || now.Sub(sh.sweep) > time.Minute {
			sh.sweepLocked(now, l)
		}
		if len(sh.buckets) >= maxBuckets {
			// Still full of active clients: forget one (a forgotten client
			// starts again with a full bucket) rather than grow.
			for k := range sh.buckets {
				delete(sh.buckets, k)
				break
			}
		}
		bk = &bucket{tokens: l.burst, last: now}
		sh.buckets[ip] = bk
	}
	bk.tokens = min(l.burst, bk.tokens+now.Sub(bk.last).Seconds()*l.rate)
	bk.last = now
	if bk.tokens >= 1 {
		bk.tokens--
		return 0, true
	}
	return time.Duration((1 - bk.tokens) / l.rate * float64(time.Second)), false
}

// sweepLocked drops buckets that have refilled completely (their client
// has been idle long enough to be forgotten without changing anything).
func (sh *limiterShard) sweepLocked(now time.Time, l *limiter) {
	sh.sweep = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for ip, b := range sh.buckets {
		if now.Sub(b.last) >= full {
			delete(sh.buckets, ip)
		}
	}
}
