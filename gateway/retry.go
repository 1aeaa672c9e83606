package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// Retries hide a failed instance from the client:
//   - a request that failed before anything reached the upstream (the dial
//     failed: refused, unreachable, timed out) is retried for any method, at
//     once and outside the budget: it cost the upstream nothing, and a node
//     that crashed refuses every request sent to it at the same moment;
//   - a request that failed later (reset, timeout) or was answered 502, 503
//     or 504 is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT,
//     DELETE, or it carries Idempotency-Key), after a jittered retryBackoff
//     and within a budget: retries in flight stay under retryBudget of the
//     requests in flight (at least minRetries at a time), so a failing
//     service is not hit with a storm. The budget is taken after the backoff
//     and held only while the retried attempt is out.
//
// Every extra attempt, retry or hedge, goes to another instance, and there
// are at most maxRetries of them per request. Only requests whose body is
// empty or was buffered (at most maxReplayBody) can be sent again; larger
// bodies are streamed and never retried. Upgrades are never retried.
const (
	maxRetries    = 2
	retryBackoff  = 25 * time.Millisecond
	retryBudget   = 0.2
	minRetries    = 3
	maxReplayBody = 64 << 10
)

// retryTransport sends a proxied request and, when that is safe and the
// budget allows, sends it again to another instance of the service.
type retryTransport struct {
	g    *Gateway
	base http.RoundTripper
	// background counts the goroutines that outlive a request: hedge
	// attempts still out when another won, and their settling. Shutdown
	// cancels and waits for them.
	background sync.WaitGroup

	inflight        atomic.Int64
	retriesInflight atomic.Int64
}

var _ http.RoundTripper = (*retryTransport)(nil)

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := routeFrom(req.Context())
	if rt == nil || rt.st == nil {
		return t.base.RoundTrip(req)
	}
	t.inflight.Add(1)
	defer t.inflight.Add(-1)
	return t.roundTrip(req, rt, nil)
}

// firstAttempt is an attempt the express path (express.go) already sent to
// the route's instance and handed over unfinished: wait returns its
// outcome, and does once's bookkeeping.
type firstAttempt struct {
	sent time.Time
	wait func(ctx context.Context) (*http.Response, error)
}

// roundTrip is RoundTrip after the in-flight count, starting from first
// when it is not nil.
func (t *retryTransport) roundTrip(req *http.Request, rt *route, first *firstAttempt) (*http.Response, error) {
	var triedBuf [1 + maxRetries]string // every instance asked, hedges included
	tried := append(triedBuf[:0], rt.hostport)
	holding := false // a retry token is held while the retried attempt is out
	defer func() {
		if holding {
			t.retriesInflight.Add(-1)
		}
	}()
	for {
		var resp *http.Response
		var err error
		resp, tried, err = t.send(req, rt, tried, first)
		first = nil
		if holding {
			t.retriesInflight.Add(-1)
			holding = false
		}
		failed, retryable := t.classify(req, rt, resp, err)
		if verdict(req, err) {
			t.g.report(rt, rt.hostport, failed)
		}
		if !retryable || len(tried) > maxRetries {
			return resp, err
		}
		if err == nil || !notSent(err) {
			// The upstream may have done work: back off, and stay within
			// the budget. The answer stays open meanwhile, for the client
			// if no retry is allowed.
			if !sleepJitter(req.Context(), retryBackoff) {
				if resp != nil {
					resp.Body.Close()
				}
				return nil, req.Context().Err()
			}
			if !t.takeRetry() {
				return resp, err
			}
			holding = true
		}
		// Retries and hedges must not move the round-robin cursor, or the
		// next request's first attempt would land on the failing instance
		// again.
		next := chooseExcept(selHedge, rt.st, t.g.live, rt.insts, tried, pickOpts{})
		if next == nil {
			return resp, err
		}
		if resp != nil {
			discard(resp)
		}
		rt.st.retries.Add(1)
		rt.retarget(next)
		tried = append(tried, rt.hostport)
		req = rt.outbound(req)
	}
}

// verdict reports whether an attempt's outcome says something about the
// instance: not when the client went away or the client's own body failed
// (too large, or broken off), which are no fault of the instance.
func verdict(req *http.Request, err error) bool {
	if err == nil {
		return true
	}
	return req.Context().Err() == nil && !clientsFault(err)
}

// errClientBody marks a failure to read the client's request body.
var errClientBody = errors.New("reading the client's request body")

// report feeds one attempt's outcome to the counters and outlier detection.
func (g *Gateway) report(rt *route, hostport string, failed bool) {
	g.reportTo(rt.st, rt.inst.Service, len(rt.insts), hostport, failed, "consecutive failures")
}

// reportTo is report without a route: instances is the service's instance
// count, why says what failed, for the log.
func (g *Gateway) reportTo(st *serviceState, service string, instances int, hostport string, failed bool, why string) {
	if failed {
		// Every failed exchange is counted here, once.
		st.upstreamErrors.Add(1)
	}
	if st.report(hostport, failed, instances) {
		st.ejections.Add(1)
		g.log.Warn("instance ejected after "+why, "service", service, "addr", hostport)
	}
}

// takeRetry reserves a retry within the budget.
func (t *retryTransport) takeRetry() bool {
	limit := max(int64(minRetries), int64(float64(t.inflight.Load())*retryBudget))
	if t.retriesInflight.Add(1) > limit {
		t.retriesInflight.Add(-1)
		return false
	}
	return true
}

// classify says whether the attempt failed (for outlier detection) and
// whether it may be retried.
func (t *retryTransport) classify(req *http.Request, rt *route, resp *http.Response, err error) (failed, retryable bool) {
	if err != nil {
		if !verdict(req, err) {
			return false, false // the client went away or its body failed
		}
		if !rt.replayable || rt.upgrade {
			return true, false
		}
		return true, notSent(err) || wire.Idempotent(req)
	}
	if retryableStatus(resp.StatusCode) {
		return true, rt.replayable && !rt.upgrade && wire.Idempotent(req)
	}
	return false, false
}

// notSent reports whether err means the request never reached the
// upstream: the connection could not be made.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// sleepJitter waits between d/2 and d, or until ctx is done (false).
func sleepJitter(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d/2 + rand.N(d/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// retarget points the route at inst.
func (rt *route) retarget(inst *api.Instance) {
	rt.inst = inst
	rt.hostport = rt.st.hostport(inst)
	rt.path, rt.rawPath = upstreamPath(inst.Path, rt.decRest, rt.escRest)
	if rt.debug {
		rt.upstream[0] = inst.Node
	}
}

// outbound is req sent to the route's current instance, with a fresh copy
// of the buffered body.
func (rt *route) outbound(req *http.Request) *http.Request { return rt.outboundTo(req, rt.inst) }

// outboundTo is req sent to inst, with a fresh copy of the buffered body.
func (rt *route) outboundTo(req *http.Request, inst *api.Instance) *http.Request {
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = scheme(inst), rt.st.hostport(inst)
	out.URL.Path, out.URL.RawPath = upstreamPath(inst.Path, rt.decRest, rt.escRest)
	out.Host = ""
	if rt.body != nil {
		out.Body = io.NopCloser(bytes.NewReader(rt.body))
		out.ContentLength = int64(len(rt.body))
		out.GetBody = rt.getBody
	}
	return out
}

// bufferBody reads a small request body into memory so it can be sent
// again; it reports whether the request can be replayed.
func bufferBody(r *http.Request) (body []byte, replayable bool, err error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, true, nil
	}
	if r.ContentLength < 0 || r.ContentLength > maxReplayBody {
		return nil, false, nil
	}
	buf := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, buf); err != nil {
		return nil, false, err
	}
	r.Body = io.NopCloser(bytes.NewReader(buf))
	// With GetBody the transport itself resends on a keep-alive connection
	// the upstream had closed. (The closure captures buf, not the result
	// body, which would put body on the heap for every request.)
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	return buf, true, nil
}

func (rt *route) getBody() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(rt.body)), nil
}

// clientBody is a client's request body. Each read has ClientBodyTimeout
// to bring more (the connection's read deadline, moved forward at every
// read: a slow upload that keeps moving passes, a stalled one fails), and
// its read errors are marked, so that they are not held against the
// instance.
type clientBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	ended   atomic.Bool // EOF or an error: the deadlines are no longer the body's
	aborted atomic.Bool // AbortRead: a read error now is the gateway's doing
	// err is the read error, marked, that ended the body (not EOF). A
	// read error also makes net/http cancel the request's context, so the
	// failure can look like the client leaving: this says it was not.
	err atomic.Pointer[error]
}

func (b *clientBody) Read(p []byte) (int, error) {
	if b.ended.Load() {
		return b.ReadCloser.Read(p)
	}
	deadline := time.Now().Add(b.timeout)
	_ = b.rc.SetReadDeadline(deadline)
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		// Done: net/http's own deadlines (and its read that watches for
		// the client closing while the answer streams) take over. (After
		// an error the deadline stays: net/http would otherwise wait for
		// the rest of a stalled body before closing the connection.)
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		b.ended.Store(true)
	}
	if err != nil && err != io.EOF {
		if b.aborted.Load() && !(isTimeout(err) && !time.Now().Before(deadline)) {
			// (A read that outlived its own deadline is the client's
			// stall, even if an abort came while it returned: the stall
			// fails the read, net/http cancels the request's context for
			// it, and the upstream client aborts the body for that.)
			return n, errBodyAborted
		}
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = fmt.Errorf("%w: %w", errClientBody, err)
		}
		b.err.Store(&err)
	}
	return n, err
}

// errBodyAborted is a read of a client's body that abortRead failed.
var errBodyAborted = errors.New("gateway: the request's body is no longer read")

// AbortRead fails a read of the body in progress, and those to come: the
// request has ended (its context is done) and whoever reads the body is
// to know it now.
func (b *clientBody) AbortRead() {
	if !b.ended.Load() {
		b.aborted.Store(true)
		_ = b.rc.SetReadDeadline(aLongTimeAgo)
	}
}

// clientsFault reports whether err is a failure of the client's body
// (broken off, stalled, malformed, over the limit), not of the upstream.
func clientsFault(err error) bool {
	var tooBig *http.MaxBytesError
	return errors.Is(err, errClientBody) || errors.As(err, &tooBig)
}

// failure is the error that ended the body, nil if none did (or b is nil).
func (b *clientBody) failure() error {
	if b == nil {
		return nil
	}
	if p := b.err.Load(); p != nil {
		return *p
	}
	return nil
}

// once sends req to the instance at hostport, keeping its in-flight count
// and latency estimate.
func (t *retryTransport) once(req *http.Request, st *serviceState, hostport string) (*http.Response, error) {
	mark := st.begin(hostport, time.Now())
	resp, err := t.base.RoundTrip(req)
	mark.end(err == nil)
	return resp, err
}

// hedgeAfter is how long to wait for the route's instance to answer req
// before also asking another; 0: no hedge (the request may not be sent
// twice, no other instance is left, or hedging is off and the instance has
// answered lately).
func (t *retryTransport) hedgeAfter(req *http.Request, rt *route, tried []string) time.Duration {
	if !rt.replayable || rt.upgrade || !wire.Idempotent(req) || len(rt.insts) < 2 || len(tried) > maxRetries {
		return 0
	}
	delay := t.hedgeDelay(rt.st)
	if delay <= 0 && rt.st.healthOf(rt.hostport).unproven(time.Now().UnixNano()) {
		delay = defaultHedgeDelay
	}
	return delay
}

// hedgeDelay is how long to wait for an instance before also asking
// another one; 0 means no hedging.
func (t *retryTransport) hedgeDelay(st *serviceState) time.Duration {
	cfg := t.g.cfg
	if cfg.HedgeAuto {
		// The service's p95, within bounds; until there are enough
		// samples, a default: a gateway that just started must not wait
		// for a hung instance any longer than one that has been up.
		p95 := st.latency.quantile(0.95)
		if p95 <= 0 {
			return defaultHedgeDelay
		}
		return min(max(p95, minHedgeDelay), maxHedgeDelay)
	}
	return cfg.HedgeAfter
}

const (
	// minHedgeDelay keeps automatic hedging from doubling the load of a
	// service whose p95 is tiny.
	minHedgeDelay = 10 * time.Millisecond
	// defaultHedgeDelay stands in for the p95 until there is one, and is
	// the delay of the hedge that covers a refresh pick (below) when
	// hedging is off. Services behind the gateway answer within a few
	// milliseconds on a LAN; 100ms hedges few healthy requests and keeps a
	// hung instance from costing a request more than that.
	defaultHedgeDelay = 100 * time.Millisecond
	// maxHedgeDelay caps the automatic delay: the histogram covers every
	// request since the gateway started, and a few slow seconds in the
	// past (a paused instance answering late when resumed, a slow
	// dependency) must not leave hung instances stalling requests for
	// seconds. A service whose p95 really is over 1s has its slowest
	// requests hedged, within the retry budget.
	maxHedgeDelay = time.Second
)

// waitBackground waits for the goroutines that outlived their requests
// (cancelled by then, see Gateway.shutdown), for at most d.
func (t *retryTransport) waitBackground(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		t.background.Wait()
		close(done)
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// Hedge losers feed outlier detection: once another attempt has won, a
// loser still out is given until slowStrikeFactor times the hedge delay
// (at least minSlowStrike) after it was sent to answer. If it answers, that
// is a success; if not, a failure (a "slow strike"), so that a hung
// instance, whose requests are all cancelled by winning hedges, is ejected
// like one that refuses connections. A healthy instance answers within
// that time nearly always, and would need ejectAfter strikes in a row,
// with no success in between, to be ejected.
const (
	slowStrikeFactor = 4
	minSlowStrike    = 250 * time.Millisecond
)

// attemptResult is the outcome of one of the concurrent attempts of a
// hedged request.
type attemptResult struct {
	id   int
	resp *http.Response
	err  error
}

// attempt is one of the concurrent attempts of a hedged request.
type attempt struct {
	inst     *api.Instance
	hostport string
	sent     time.Time
	ctx      context.Context
	cancel   context.CancelFunc
	detach   func() bool // stops the request's context from cancelling it
	done     bool        // its outcome came back
	held     bool        // detached: it outlives the request to be judged
	struck   bool        // silent for too long: reported failed and cancelled
}

// send sends req to the route's instance and, for an idempotent request
// with a replayable body that has no answer within the hedge delay, also to
// another instance, and to a third if neither has answered after another
// delay (at most maxRetries extra attempts per request, counting those in
// tried): the first response wins, the others are cancelled. A request to
// an instance that has not answered lately (picked to refresh its stale
// estimate, or the only one left: it may be hung, nobody knows) is hedged
// after defaultHedgeDelay even with hedging off.
// Without hedging it is a plain attempt. Every instance asked is appended
// to tried, which is returned, and the route points at the one whose
// outcome is returned.
func (t *retryTransport) send(req *http.Request, rt *route, tried []string, first *firstAttempt) (*http.Response, []string, error) {
	delay := t.hedgeAfter(req, rt, tried)
	if delay <= 0 {
		if first != nil {
			resp, err := first.wait(req.Context())
			return resp, tried, err
		}
		resp, err := t.once(req, rt.st, rt.hostport)
		return resp, tried, err
	}
	// On send's stack (no slice in h points into h, which would move it
	// to the heap): nothing keeps h once send returns.
	h := hedged{t: t, req: req, rt: rt, delay: delay, results: make(chan attemptResult, 1+maxRetries)}
	h.ntried = copy(h.tried[:], tried)
	// Hedges share the retry budget.
	defer func() { t.retriesInflight.Add(int64(-h.tokens)) }()
	resp, err := h.run(first)
	return resp, append(tried[:0], h.tried[:h.ntried]...), err
}

// hedged is the state of one hedged request (see send): its attempts, out
// at once, and what it took from the budget.
type hedged struct {
	t       *retryTransport
	req     *http.Request
	rt      *route
	tried   [1 + maxRetries]string // every instance asked, as in roundTrip
	ntried  int
	delay   time.Duration
	results chan attemptResult
	atts    [1 + maxRetries]attempt
	natts   int
	pending int           // attempts whose outcome has not come back
	tokens  int           // retry tokens held by hedges
	capped  bool          // the hedge cap refused one (counted once)
	last    attemptResult // the latest failure
}

// run launches the first attempt (or takes over first) and waits for a
// winner, hedging each time everything out has been silent for a delay.
func (h *hedged) run(first *firstAttempt) (*http.Response, error) {
	h.launch(h.req, h.rt.inst, h.rt.hostport, first)
	// A first attempt handed over has been out for a while already.
	timer := time.NewTimer(h.delay - time.Since(h.atts[0].sent))
	defer timer.Stop()
	for h.pending > 0 {
		select {
		case r := <-h.results:
			if resp := h.outcome(r); resp != nil {
				return resp, nil
			}
		case <-timer.C:
			// Ask one more instance, or try again after another delay
			// (the budget may have room by then).
			h.hedge(false)
			timer.Reset(h.delay)
		case <-h.req.Context().Done():
			for i := range h.natts {
				h.atts[i].cancel()
			}
			h.t.closeAnswers(h.results, h.pending)
			return nil, h.req.Context().Err()
		}
	}
	if a := h.atts[h.last.id]; a.inst != h.rt.inst {
		h.rt.retarget(a.inst)
	}
	return nil, h.last.err
}

// outcome takes one attempt's outcome and returns the winning answer, or
// nil when the request goes on waiting (or has no attempt left).
func (h *hedged) outcome(r attemptResult) *http.Response {
	h.pending--
	a := &h.atts[r.id]
	a.done = true
	rt := h.rt
	switch {
	case r.err == nil && h.pending > 0 && retryableStatus(r.resp.StatusCode):
		// A quick 502/503/504 must not beat an attempt that may still
		// succeed.
		h.t.g.report(rt, a.hostport, true)
		discard(r.resp)
		a.cancel()
		h.last = attemptResult{id: r.id, err: errHedgeLost}
		return nil
	case r.err == nil:
		if h.pending > 0 {
			h.t.settleLosers(rt, h.atts[:h.natts], r.id, h.pending, h.results, h.delay)
		}
		if a.inst != rt.inst {
			rt.retarget(a.inst)
		}
		r.resp.Body = &cancelOnClose{ReadCloser: r.resp.Body, cancel: a.cancel}
		return r.resp
	}
	a.cancel()
	if h.pending > 0 {
		if verdict(h.req, r.err) {
			// Reported here: the caller sees only the final outcome.
			h.t.g.report(rt, a.hostport, true)
		}
		// Whatever is still out may be hung: ask another now. A failure
		// that reached no upstream costs no budget.
		h.hedge(notSent(r.err))
	}
	h.last = r
	return nil
}

// hedge asks one more instance, if one is left and allowed: free hedges
// (after a failure that reached no upstream) take nothing from the cap or
// the budget.
func (h *hedged) hedge(free bool) {
	rt := h.rt
	if h.ntried > maxRetries {
		return
	}
	next := chooseExcept(selHedge, rt.st, h.t.g.live, rt.insts, h.tried[:h.ntried], pickOpts{})
	if next == nil {
		return
	}
	if !free {
		if !rt.st.takeHedge() {
			if !h.capped { // once per request, however often the timer asks
				h.capped = true
				rt.st.hedgesCapped.Add(1)
			}
			return
		}
		if !h.t.takeRetry() {
			rt.st.refundHedge()
			return
		}
		h.tokens++
	}
	rt.st.hedges.Add(1)
	hp := rt.st.hostport(next)
	h.tried[h.ntried] = hp
	h.ntried++
	h.launch(rt.outboundTo(h.req, next), next, hp, nil)
}

// launch sends r to inst (or takes over first) in a goroutine of its own,
// whose outcome comes back on results. The attempt's context is detached
// from the request's (but cancelled with it until detach), so that a loser
// may outlive the request to be judged.
func (h *hedged) launch(r *http.Request, inst *api.Instance, hostport string, first *firstAttempt) {
	t := h.t
	parent := r.Context()
	ctx, cancelCtx := context.WithCancel(context.WithoutCancel(parent))
	// Shutdown cancels attempts that outlived their request.
	unlink := context.AfterFunc(t.g.baseCtx, cancelCtx)
	cancel := func() { unlink(); cancelCtx() }
	id := h.natts
	sent := time.Now()
	if first != nil {
		sent = first.sent
	}
	h.atts[id] = attempt{inst: inst, hostport: hostport, sent: sent, ctx: ctx, cancel: cancel,
		detach: context.AfterFunc(parent, cancel)}
	h.natts++
	h.pending++
	st, results := h.rt.st, h.results
	t.background.Add(1)
	go func() {
		defer t.background.Done()
		var resp *http.Response
		var err error
		if first != nil {
			resp, err = first.wait(ctx)
		} else {
			resp, err = t.once(r.WithContext(ctx), st, hostport)
		}
		results <- attemptResult{id: id, resp: resp, err: err}
	}()
}

// discard reads what is left of an answer nobody will see (a little of
// it: enough for the connection to be reused) and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// settleLosers lets the attempts still out when attempt won did answer
// for a while, in the background, and reports each as a success or a
// failure (see slowStrikeFactor) before closing it.
func (t *retryTransport) settleLosers(rt *route, atts []attempt, won, pending int, results <-chan attemptResult, delay time.Duration) {
	losers := append([]attempt(nil), atts...) // atts is the request's
	st, service, n := rt.st, rt.inst.Service, len(rt.insts)
	grace := max(slowStrikeFactor*delay, minSlowStrike)
	var deadline time.Time
	for i := range losers {
		a := &losers[i]
		if i == won || a.done {
			continue
		}
		// false: the client has gone already, and the attempt with it.
		a.held = a.detach()
		if end := a.sent.Add(grace); end.After(deadline) {
			deadline = end
		}
	}
	t.background.Add(1)
	go func() {
		defer t.background.Done()
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		for pending > 0 {
			select {
			case r := <-results:
				pending--
				a := &losers[r.id]
				a.done = true
				failed := r.err != nil
				if r.resp != nil {
					failed = retryableStatus(r.resp.StatusCode)
					discard(r.resp)
				}
				a.cancel()
				if a.held && !a.struck && (r.err == nil || a.ctx.Err() == nil) {
					t.g.reportTo(st, service, n, a.hostport, failed, "consecutive failures")
				}
			case <-timer.C:
				for i := range losers {
					a := &losers[i]
					if i == won || a.done || a.struck {
						continue
					}
					a.struck = true
					a.cancel()
					if a.held {
						t.g.reportTo(st, service, n, a.hostport, true, "consecutive failures or silences")
					}
				}
			}
		}
	}()
}

// closeAnswers closes, in the background, the answers of the pending
// attempts, all of them cancelled.
func (t *retryTransport) closeAnswers(results <-chan attemptResult, pending int) {
	if pending == 0 {
		return
	}
	t.background.Add(1)
	go func() {
		defer t.background.Done()
		for range pending {
			if r := <-results; r.resp != nil {
				r.resp.Body.Close()
			}
		}
	}()
}

// errHedgeLost stands for an attempt answered 502/503/504 while another was
// still pending.
var errHedgeLost = errors.New("answered 502/503/504 while another attempt was pending")

func retryableStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// cancelOnClose releases the winning attempt's context once its body is
// done with.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
