package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
)

// Errors of Report.
var (
	ErrUnknownInstance = errors.New("no such instance on this node")
	ErrUnknownCheck    = errors.New("the instance has no such check")
	ErrNotTTL          = errors.New("only a ttl check is reported by its service")
)

// DefaultConcurrency is how many probes run at once when Config leaves it
// zero.
const DefaultConcurrency = 64

// Config configures a Runner.
type Config struct {
	// TLS is the client configuration for instances that serve TLS (the
	// node certificate and the cluster CA).
	TLS *tls.Config
	// Concurrency bounds the probes running at once (default 64).
	Concurrency int
	Logger      *slog.Logger
	// OnChange is told that a check of service/id changed status (Checks
	// has the new statuses). It must not block.
	OnChange func(service, id string)
	// OnExpire is told that check of service/id has been critical for its
	// deregister_critical_after, once per such stretch. It must not block.
	OnExpire func(service, id, check string)
}

// Runner runs the checks of the instances it is given.
type Runner struct {
	cfg     Config
	logger  *slog.Logger
	clients *clients
	sem     chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	runs, transitions atomic.Int64

	mu        sync.Mutex
	instances map[string]*instance // by service/id
}

type instance struct {
	service, id string
	target      api.Instance // address, port, TLS: what the probes dial
	checks      []*check
}

type check struct {
	def    api.Check
	p      prober
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{} // ttl: a report came, restart the timer

	// Guarded by Runner.mu.
	status, result, output string
	lastRun, since         time.Time
	successes, failures    int
	criticalSince          time.Time
	expired                bool
}

// New returns a runner; Close stops it.
func New(cfg Config) *Runner {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Runner{
		cfg: cfg, logger: cfg.Logger.With("component", "health"), clients: newClients(cfg.TLS),
		sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, cancel: cancel,
		instances: map[string]*instance{},
	}
}

func key(service, id string) string { return service + "/" + id }

// sameTarget reports whether a and b are probed at the same place.
func sameTarget(a, b api.Instance) bool {
	return a.Address == b.Address && a.Port == b.Port && a.TLS == b.TLS
}

// Set runs the checks of in (its Checks normalized), replacing those it
// had: a check whose definition and target are unchanged keeps running
// with its state; the others start from the status in.Checks gives them
// (the declared initial status, or the current one the node carried over).
// An instance without checks is removed.
func (r *Runner) Set(in api.Instance) {
	k := key(in.Service, in.ID)
	r.mu.Lock()
	if r.ctx.Err() != nil {
		r.mu.Unlock()
		return // closed
	}
	old := r.instances[k]
	if len(in.Checks) == 0 {
		delete(r.instances, k)
		r.mu.Unlock()
		r.stop(old)
		return
	}
	next := &instance{service: in.Service, id: in.ID, target: in}
	next.target.Checks = nil
	kept := map[*check]bool{}
	dirty := false
	for _, def := range in.Checks {
		if old != nil && sameTarget(old.target, in) {
			if c := old.find(def.Name); c != nil && c.def.SameDefinition(def) {
				next.checks = append(next.checks, c)
				kept[c] = true
				dirty = dirty || c.status != def.Status
				continue
			}
		}
		next.checks = append(next.checks, r.start(in, def))
	}
	r.instances[k] = next
	var stopped []*check
	if old != nil {
		for _, c := range old.checks {
			if !kept[c] {
				stopped = append(stopped, c)
			}
		}
	}
	r.mu.Unlock()
	r.stopChecks(stopped)
	if dirty && r.cfg.OnChange != nil {
		r.cfg.OnChange(in.Service, in.ID)
	}
}

// Remove stops the checks of service/id.
func (r *Runner) Remove(service, id string) {
	k := key(service, id)
	r.mu.Lock()
	old := r.instances[k]
	delete(r.instances, k)
	r.mu.Unlock()
	r.stop(old)
}

func (r *Runner) stop(in *instance) {
	if in != nil {
		r.stopChecks(in.checks)
	}
}

func (r *Runner) stopChecks(cs []*check) {
	for _, c := range cs {
		c.cancel()
	}
	for _, c := range cs {
		<-c.done
		if c.p != nil {
			c.p.close()
		}
	}
}

func (in *instance) find(name string) *check {
	for _, c := range in.checks {
		if c.def.Name == name {
			return c
		}
	}
	return nil
}

// start starts def's goroutine; called with r.mu held.
func (r *Runner) start(in api.Instance, def api.Check) *check {
	ctx, cancel := context.WithCancel(r.ctx)
	c := &check{def: def, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1),
		status: def.Status, since: def.Since, output: def.Output}
	if c.since.IsZero() {
		c.since = time.Now()
	}
	if c.status == api.HealthCritical {
		c.criticalSince = time.Now()
	}
	service, id := in.Service, in.ID
	r.wg.Add(1)
	if def.Type == api.CheckTTL {
		go func() {
			defer r.wg.Done()
			defer close(c.done)
			r.runTTL(ctx, service, id, c)
		}()
		return c
	}
	c.p = newProber(in, def, r.clients)
	go func() {
		defer r.wg.Done()
		defer close(c.done)
		r.runProbe(ctx, service, id, c)
	}()
	return c
}

// firstRunWithin caps the random delay of a check's first run.
const firstRunWithin = 500 * time.Millisecond

func (r *Runner) runProbe(ctx context.Context, service, id string, c *check) {
	interval, timeout := c.def.Interval.D(), c.def.Timeout.D()
	delay := rand.N(min(interval/2, firstRunWithin) + 1)
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case <-ctx.Done():
			return
		case r.sem <- struct{}{}:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		status, out := c.p.probe(pctx)
		cancel()
		<-r.sem
		if ctx.Err() != nil {
			return
		}
		r.runs.Add(1)
		r.record(service, id, c, status, out, true)
		// Up to 5% either way, so checks that started together drift apart.
		t.Reset(interval - interval/20 + rand.N(interval/10+1))
	}
}

func (r *Runner) runTTL(ctx context.Context, service, id string, c *check) {
	ttl := c.def.TTL.D()
	t := time.NewTimer(ttl)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
			t.Reset(ttl)
		case <-t.C:
			r.record(service, id, c, api.HealthCritical, fmt.Sprintf("TTL of %s expired: the service did not report", ttl), false)
			// Stay critical; look again when deregister_critical_after
			// may have run out, or after another TTL.
			next := ttl
			if d := c.def.DeregisterCriticalAfter.D(); d > 0 {
				r.mu.Lock()
				next = max(time.Until(c.criticalSince.Add(d)), time.Millisecond)
				r.mu.Unlock()
			}
			t.Reset(next)
		}
	}
}

// record takes a result: through the thresholds when thresholds is set (a
// probe), as the new status otherwise (a ttl report or expiry).
func (r *Runner) record(service, id string, c *check, status, output string, thresholds bool) {
	now := time.Now()
	r.mu.Lock()
	c.result, c.output, c.lastRun = status, clean(output), now
	next := c.status
	if !thresholds {
		next = status
		if status == api.HealthPassing {
			c.successes, c.failures = c.successes+1, 0
		} else {
			c.successes, c.failures = 0, c.failures+1
		}
	} else if status == api.HealthPassing {
		c.successes, c.failures = c.successes+1, 0
		if c.successes >= c.def.SuccessBeforePassing {
			next = api.HealthPassing
		}
	} else {
		c.successes, c.failures = 0, c.failures+1
		switch {
		case c.failures >= c.def.FailuresBeforeCritical:
			next = status
		case c.failures >= c.def.FailuresBeforeWarning:
			next = api.HealthWarning
		}
	}
	changed := next != c.status
	if changed {
		c.status, c.since = next, now
		r.transitions.Add(1)
	}
	expire := false
	if c.status == api.HealthCritical {
		if c.criticalSince.IsZero() {
			c.criticalSince = now
		}
		if d := c.def.DeregisterCriticalAfter.D(); d > 0 && !c.expired && now.Sub(c.criticalSince) >= d {
			c.expired, expire = true, true
		}
	} else {
		c.criticalSince, c.expired = time.Time{}, false
	}
	live := r.instances[key(service, id)] != nil
	r.mu.Unlock()
	if !live {
		return // removed meanwhile
	}
	if changed {
		r.logger.Info("check status changed", "service", service, "id", id, "check", c.def.Name, "status", next, "output", truncate(c.output, 200))
		if r.cfg.OnChange != nil {
			r.cfg.OnChange(service, id)
		}
	}
	if expire {
		r.logger.Warn("check critical for its deregister_critical_after; deregistering the instance", "service", service, "id", id, "check", c.def.Name, "after", c.def.DeregisterCriticalAfter.D())
		if r.cfg.OnExpire != nil {
			r.cfg.OnExpire(service, id, c.def.Name)
		}
	}
}

// Report is a ttl check's report from its service: status (passing,
// warning or critical) and an optional note become the check's status and
// output at once, and its TTL starts again.
func (r *Runner) Report(service, id, name, status, note string) error {
	r.mu.Lock()
	in := r.instances[key(service, id)]
	if in == nil {
		r.mu.Unlock()
		return fmt.Errorf("%s/%s: %w", service, id, ErrUnknownInstance)
	}
	c := in.find(name)
	r.mu.Unlock()
	switch {
	case c == nil:
		return fmt.Errorf("%s/%s has no check %q: %w", service, id, name, ErrUnknownCheck)
	case c.def.Type != api.CheckTTL:
		return fmt.Errorf("check %q of %s/%s is a %s check: %w", name, service, id, c.def.Type, ErrNotTTL)
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	if note == "" {
		note = "reported " + status
	}
	r.record(service, id, c, status, note, false)
	return nil
}

// Checks returns the checks of service/id with their current statuses
// (and the output of each status change, cut to api.MaxStoredOutput), as
// the registry should hold them; ok is false when the runner does not run
// the instance.
func (r *Runner) Checks(service, id string) (cs []api.Check, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.instances[key(service, id)]
	if in == nil {
		return nil, false
	}
	for _, c := range in.checks {
		d := c.def
		d.Status, d.Since = c.status, c.since.UTC().Truncate(time.Millisecond)
		d.Output = truncate(c.output, api.MaxStoredOutput)
		cs = append(cs, d)
	}
	return cs, true
}

// Carry gives the checks of in (normalized) that the runner runs
// unchanged their current status, so that registering an instance again
// with the same checks does not reset them to their initial status.
func (r *Runner) Carry(in *api.Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.instances[key(in.Service, in.ID)]
	if cur == nil || !sameTarget(cur.target, *in) {
		return
	}
	for i := range in.Checks {
		if c := cur.find(in.Checks[i].Name); c != nil && c.def.SameDefinition(in.Checks[i]) {
			in.Checks[i].Status, in.Checks[i].Since = c.status, c.since.UTC().Truncate(time.Millisecond)
			in.Checks[i].Output = truncate(c.output, api.MaxStoredOutput)
		}
	}
}

// Results returns the latest run of every check, sorted by instance and
// check name; service, when set, keeps only that service's.
func (r *Runner) Results(service string) []api.CheckResult {
	r.mu.Lock()
	var out []api.CheckResult
	for _, in := range r.instances {
		if service != "" && in.service != service {
			continue
		}
		for _, c := range in.checks {
			out = append(out, api.CheckResult{
				Service: in.service, ID: in.id, Name: c.def.Name, Type: c.def.Type,
				Status: c.status, Result: c.result, Output: c.output,
				LastRun: c.lastRun, Since: c.since, Successes: c.successes, Failures: c.failures,
			})
		}
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Stats returns how many probes ran and how many status changes there were.
func (r *Runner) Stats() (runs, transitions int64) {
	return r.runs.Load(), r.transitions.Load()
}

// Count returns how many checks the runner runs.
func (r *Runner) Count() int {
	n := 0
	for _, v := range r.ByStatus() {
		n += v
	}
	return n
}

// ByStatus counts the runner's checks by their current status.
func (r *Runner) ByStatus() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for _, in := range r.instances {
		for _, c := range in.checks {
			out[c.status]++
		}
	}
	return out
}

// Close stops every check and waits for them.
func (r *Runner) Close() {
	r.mu.Lock()
	r.cancel()
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	all := r.instances
	r.instances = map[string]*instance{}
	r.mu.Unlock()
	for _, in := range all {
		for _, c := range in.checks {
			if c.p != nil {
				c.p.close()
			}
		}
	}
}
