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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"
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
// Every retry goes to another instance, and there are at most maxRetries
// of them per request. Only requests whose body is
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
	var triedBuf [2 * (1 + maxRetries)]string // each attempt and its hedge
	tried := append(triedBuf[:0], rt.hostport)
	retried := 0
	holding := false // a retry token is held while the retried attempt is out
	defer func() {
		if holding {
			t.retriesInflight.Add(-1)
		}
	}()
	for {
		resp, hedgedTo, err := t.send(req, rt, tried)
		if hedgedTo != "" {
			tried = append(tried, hedgedTo)
		}
		if holding {
			t.retriesInflight.Add(-1)
			holding = false
		}
		failed, retryable := t.classify(req, rt, resp, err)
		if verdict(req, err) {
			t.g.report(rt, rt.hostport, failed)
		}
		if !retryable || retried >= maxRetries {
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
		next := chooseExcept(selRandom, rt.st, t.g.live, rt.insts, tried, pickOpts{})
		if next == nil {
			return resp, err
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		rt.st.retries.Add(1)
		retried++
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
	if req.Context().Err() != nil {
		return false
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) || errors.Is(err, errClientBody) {
		return false
	}
	return true
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
		return true, notSent(err) || idempotent(req)
	}
	if retryableStatus(resp.StatusCode) {
		return true, rt.replayable && !rt.upgrade && idempotent(req)
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

func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != ""
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
	rt.upstream[0] = inst.Node
}

// outbound is req sent to the route's current instance, with a fresh copy
// of the buffered body.
func (rt *route) outbound(req *http.Request) *http.Request { return rt.outboundTo(req, rt.inst) }

// outboundTo is req sent to inst, with a fresh copy of the buffered body.
func (rt *route) outboundTo(req *http.Request, inst *api.Instance) *http.Request {
	out := req.Clone(req.Context())
	out.URL.Host = rt.st.hostport(inst)
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

// clientBody marks read errors of a streamed client body, so that they are
// not held against the instance.
type clientBody struct{ io.ReadCloser }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = fmt.Errorf("%w: %w", errClientBody, err)
		}
	}
	return n, err
}

// once sends req to the instance at hostport, keeping its in-flight count
// and latency estimate.
func (t *retryTransport) once(req *http.Request, st *serviceState, hostport string) (*http.Response, error) {
	h := st.healthOf(hostport)
	h.inflight.Add(1)
	start := time.Now()
	var resp *http.Response
	var err error
	if rt := routeFrom(req.Context()); rt != nil && rt.headerTimeout > 0 {
		resp, err = t.withHeaderTimeout(req, rt.headerTimeout)
	} else {
		resp, err = t.base.RoundTrip(req)
	}
	h.inflight.Add(-1)
	if err == nil {
		d := time.Since(start)
		h.observe(d, start.UnixNano())
		st.latency.observe(d)
	}
	return resp, err
}

// hedgeDelay is how long to wait for the first instance before also asking
// a second one; 0 means no hedging.
func (t *retryTransport) hedgeDelay(st *serviceState) time.Duration {
	cfg := t.g.cfg
	if cfg.HedgeAuto {
		// The service's p95; until there are enough samples, no hedging.
		if p95 := st.latency.quantile(0.95); p95 > 0 {
			return max(p95, minHedgeDelay)
		}
		return 0
	}
	return cfg.HedgeAfter
}

// minHedgeDelay keeps automatic hedging from doubling the load of a
// service whose p95 is tiny.
const minHedgeDelay = 10 * time.Millisecond

// attemptResult is the outcome of one of the (at most two) concurrent
// attempts of a hedged request.
type attemptResult struct {
	id   int
	resp *http.Response
	err  error
	inst *api.Instance
}

// send sends req to the route's instance and, for an idempotent request
// with a replayable body that has no answer within the hedge delay, also to
// a second instance: the first response wins and the other attempt is
// cancelled. Without hedging it is a plain attempt.
//
// It returns the "address:port" of the instance it hedged to, "" if none.
func (t *retryTransport) send(req *http.Request, rt *route, tried []string) (*http.Response, string, error) {
	delay := t.hedgeDelay(rt.st)
	if delay <= 0 || !rt.replayable || rt.upgrade || !idempotent(req) || len(rt.insts) < 2 {
		resp, err := t.once(req, rt.st, rt.hostport)
		return resp, "", err
	}
	results := make(chan attemptResult, 2)
	var cancels []context.CancelFunc
	launch := func(r *http.Request, inst *api.Instance, hostport string) {
		ctx, cancel := context.WithCancel(r.Context())
		id := len(cancels)
		cancels = append(cancels, cancel)
		go func() {
			resp, err := t.once(r.WithContext(ctx), rt.st, hostport)
			results <- attemptResult{id: id, resp: resp, err: err, inst: inst}
		}()
	}
	// abandon cancels every attempt but keep (-1: all) and closes, in the
	// background, the answers of the pending ones.
	abandon := func(keep, pending int) {
		for i, c := range cancels {
			if i != keep {
				c()
			}
		}
		if pending > 0 {
			go func() {
				for range pending {
					if r := <-results; r.resp != nil {
						r.resp.Body.Close()
					}
				}
			}()
		}
	}
	launch(req, rt.inst, rt.hostport)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	pending, hedgedTo := 1, ""
	var last attemptResult
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			if r.err == nil && pending > 0 && retryableStatus(r.resp.StatusCode) {
				// A quick 502/503/504 must not beat an attempt that may
				// still succeed.
				t.g.report(rt, rt.st.hostport(r.inst), true)
				_, _ = io.Copy(io.Discard, io.LimitReader(r.resp.Body, 64<<10))
				r.resp.Body.Close()
				cancels[r.id]()
				last = attemptResult{id: r.id, err: errHedgeLost, inst: r.inst}
				continue
			}
			if r.err == nil {
				abandon(r.id, pending)
				if r.inst != rt.inst {
					rt.retarget(r.inst)
				}
				r.resp.Body = &cancelOnClose{ReadCloser: r.resp.Body, cancel: cancels[r.id]}
				return r.resp, hedgedTo, nil
			}
			cancels[r.id]()
			if pending > 0 && verdict(req, r.err) {
				// Reported here: the caller sees only the final outcome.
				t.g.report(rt, rt.st.hostport(r.inst), true)
			}
			last = r
		case <-timer.C:
			if hedgedTo != "" {
				continue
			}
			next := chooseExcept(selRandom, rt.st, t.g.live, rt.insts, tried, pickOpts{})
			if next == nil || !t.takeRetry() {
				continue // hedges share the retry budget
			}
			defer t.retriesInflight.Add(-1)
			rt.st.hedges.Add(1)
			hedgedTo = rt.st.hostport(next)
			launch(rt.outboundTo(req, next), next, hedgedTo)
			pending++
		case <-req.Context().Done():
			abandon(-1, pending)
			return nil, hedgedTo, req.Context().Err()
		}
	}
	if last.inst != nil && last.inst != rt.inst {
		rt.retarget(last.inst)
	}
	return nil, hedgedTo, last.err
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

// errHeaderTimeout is a service's own response-header timeout passing.
var errHeaderTimeout = &headerTimeoutError{}

type headerTimeoutError struct{}

func (*headerTimeoutError) Error() string {
	return "timeout awaiting response headers (the service's own limit)"
}
func (*headerTimeoutError) Timeout() bool   { return true }
func (*headerTimeoutError) Temporary() bool { return true }

// withHeaderTimeout sends req through the transport without a header
// timeout of its own, bounding the wait for headers by d (a service's
// override of the gateway's timeout, longer or shorter). Once headers are
// in, the body streams unbounded; its context is released on Close.
func (t *retryTransport) withHeaderTimeout(req *http.Request, d time.Duration) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(d, cancel)
	resp, err := t.g.noHeaderTimeout.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() {
		// The timer fired: whatever came back came too late.
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		if req.Context().Err() != nil {
			return nil, req.Context().Err()
		}
		return nil, errHeaderTimeout
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}
