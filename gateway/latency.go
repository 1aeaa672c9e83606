package gateway

import (
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds, in seconds, of the latency histogram
// buckets kept per service (time to the upstream's response headers).
var latencyBounds = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// latencyHist is a fixed-bucket histogram updated with atomics only.
type latencyHist struct {
	buckets [len(latencyBounds) + 1]atomic.Uint64 // the last one is +Inf
	sumNs   atomic.Int64
	count   atomic.Uint64
}

func (h *latencyHist) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBounds) && s > latencyBounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sumNs.Add(int64(d))
	h.count.Add(1)
}

// quantile returns the upper bound of the bucket holding the q-th quantile,
// 0 when there are too few samples to say (under 20).
func (h *latencyHist) quantile(q float64) time.Duration {
	n := h.count.Load()
	if n < 20 {
		return 0
	}
	want := uint64(q * float64(n))
	var seen uint64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= want {
			if i == len(latencyBounds) {
				return time.Duration(latencyBounds[len(latencyBounds)-1] * float64(time.Second))
			}
			return time.Duration(latencyBounds[i] * float64(time.Second))
		}
	}
	return 0
}

// LatencyHistogram is a snapshot of a service's latency histogram: the
// cumulative count at each of Bounds (seconds), the total count and the sum
// in seconds.
type LatencyHistogram struct {
	Bounds     []float64
	Cumulative []uint64
	Count      uint64
	Sum        float64
}

// snapshot reads the histogram without stopping writers. Count is the sum
// of the buckets read, not the count field, so that the buckets never add
// up to more than Count while observations race the read.
func (h *latencyHist) snapshot() LatencyHistogram {
	out := LatencyHistogram{Bounds: latencyBounds[:], Cumulative: make([]uint64, len(latencyBounds))}
	var c uint64
	for i := range latencyBounds {
		c += h.buckets[i].Load()
		out.Cumulative[i] = c
	}
	out.Count = c + h.buckets[len(latencyBounds)].Load()
	out.Sum = time.Duration(h.sumNs.Load()).Seconds()
	return out
}
