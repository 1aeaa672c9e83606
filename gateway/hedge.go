package gateway

// The hedge cap. A hedge is sent only after the service's p95 (or
// --hedge-after), so at steady state about one request in twenty is
// hedged; when a service slows down as a whole, every request would be,
// doubling its load just when it can least take it. So hedges are also
// bounded as a share of requests, as gRPC throttles its retries and Envoy
// budgets them: every answered request earns hedgeShare of a token, up to
// hedgeBurst tokens, and each hedge spends one. Over any stretch of time,
// hedges stay under hedgeShare of the requests, plus the burst. Hedges
// also share the retry budget (retries and hedges in flight under a fifth
// of the requests in flight), and only idempotent requests with a
// replayable body are ever hedged. A hedge that replaces an attempt that
// reached no upstream (a refused dial) is a retry, free of both.
const (
	// hedgeShare is the most hedges per request, over time.
	hedgeShare = 0.1
	// hedgeBurst is the most hedges sent back to back after a calm
	// stretch (a gateway that just started has all of them).
	hedgeBurst = 10
)

const (
	milli     = 1000
	hedgeEarn = int64(hedgeShare * milli)
	hedgeCap  = int64(hedgeBurst * milli)
)

// The bucket is kept as what has been spent from it (hedgeSpent, in
// thousandths of a token), so that a new service state starts full.

// earnHedge credits one answered request.
func (st *serviceState) earnHedge() {
	for {
		cur := st.hedgeSpent.Load()
		if cur <= 0 {
			return
		}
		if st.hedgeSpent.CompareAndSwap(cur, max(cur-hedgeEarn, 0)) {
			return
		}
	}
}

// takeHedge spends a token for a hedge; false when the cap is reached.
func (st *serviceState) takeHedge() bool {
	if st.hedgeSpent.Add(milli) <= hedgeCap {
		return true
	}
	st.hedgeSpent.Add(-milli)
	return false
}

// refundHedge gives back a token whose hedge was not sent after all.
func (st *serviceState) refundHedge() { st.hedgeSpent.Add(-milli) }
