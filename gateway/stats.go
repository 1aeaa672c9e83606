package gateway

import "sort"

// ServiceStats are the gateway's counters for one service since it started.
type ServiceStats struct {
	Service string
	// Answers counts answers by method class (0: GET, HEAD, OPTIONS; 1:
	// the rest) and status class: index 1 is 1xx ... 5 is 5xx (index 0:
	// anything else).
	Answers [2][6]uint64
	// Retries counts requests sent again to another instance.
	Retries uint64
	// Ejections counts instances ejected by outlier detection.
	Ejections uint64
	// UpstreamErrors counts upstream exchanges that failed (connection
	// errors, timeouts, 502/503/504).
	UpstreamErrors uint64
	// Inflight is the number of upstream requests in flight now.
	Inflight int64
	// Ejected is the number of instances ejected now.
	Ejected int
	// Hedges counts requests also sent to a second instance because the
	// first was slow to answer.
	Hedges uint64
	// HedgesCapped counts hedges the hedge cap did not send.
	HedgesCapped uint64
	// Latency is the histogram of the time to upstream response headers,
	// one sample per attempt.
	Latency LatencyHistogram
	// Duration is the histogram of whole requests proxied to the service,
	// from the gateway receiving the request to the end of the response
	// body, retries and hedges included; upgraded connections (WebSockets)
	// are not counted.
	Duration LatencyHistogram
}

// RateLimited counts requests answered 429 by the rate limit.
func (g *Gateway) RateLimited() uint64 { return g.rateLimited.Load() }

// Rejected counts the requests the gateway answered itself, without asking
// an instance (no such service, no live instance, a bad path or body, rate
// limited, overloaded), by their api.Error reason. Those requests are in no
// service's Answers.
func (g *Gateway) Rejected() map[string]uint64 {
	out := make(map[string]uint64, len(rejectReasons))
	for i, r := range rejectReasons {
		out[r] = g.rejected[i].Load()
	}
	return out
}

// Stats returns the counters of every service that has had a request,
// sorted by service. It reads atomics only; scraping costs the request path
// nothing.
func (g *Gateway) Stats() []ServiceStats {
	m := g.services.snap.Load()
	if m == nil {
		return nil
	}
	out := make([]ServiceStats, 0, len(*m))
	now := nowNano()
	for name, st := range *m {
		s := ServiceStats{Service: name, Retries: st.retries.Load(), Ejections: st.ejections.Load(),
			UpstreamErrors: st.upstreamErrors.Load(), Ejected: st.ejectedCount(now),
			Hedges: st.hedges.Load(), HedgesCapped: st.hedgesCapped.Load(), Latency: st.latency.snapshot(), Duration: st.duration.snapshot()}
		for m := range s.Answers {
			for i := range s.Answers[m] {
				s.Answers[m][i] = st.answers[m][i].Load()
			}
		}
		if h := st.health.Load(); h != nil {
			for _, rec := range *h {
				s.Inflight += rec.inflight.Load()
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}
