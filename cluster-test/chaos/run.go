package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/herdcluster/herd/api"
)

// Config is one chaos run.
type Config struct {
	Nodes  int      // 3 or 5
	Seed   uint64   // the random schedule: targets, order
	Faults []string // names from Faults; empty: every fault
	Hold   time.Duration
	Bin    string // bin/herd
	OutDir string // report, history, timeline and, on failure, logs
	Log    io.Writer
	// Clients and OpRate shape the registry workload; GatewayRate the
	// gateway traffic (requests per second).
	Clients     int
	OpRate      float64
	GatewayRate float64
	// Shuffle runs the faults in an order drawn from Seed.
	Shuffle bool
}

// Lease and catalog bounds the checkers hold herd to.
const (
	leaseTTL = 10 * time.Second
	// removalBound: an instance of a node that cannot renew its lease has
	// left every other catalog by lease TTL plus this.
	removalBound = 15 * time.Second
	// windowSlack: after a fault heals and the cluster is whole, a lease
	// may still lapse and be re-registered for this long (a lease granted
	// before a pause expires up to a TTL later, and the node notices at
	// its next keepalive).
	windowSlack = leaseTTL + 5*time.Second
	healTimeout = 120 * time.Second
)

// Run is one run of the suite on one cluster.
type Run struct {
	Cfg Config
	C   *Cluster
	TL  *Timeline

	reg     *Registry
	traffic *Traffic
	keys    []Key

	// hold is how long the fault being injected lasts.
	hold time.Duration
	// extra are nodes in a fault window that no fault targets.
	extra []*Node

	mu       sync.Mutex
	affected map[string]bool
	open     map[string]int // node -> index of its open window
	windows  []Window
	wipes    map[string][]time.Duration
	polls    []Poll

	Results      []FaultResult
	Failures     []string
	linearizable string // "yes", "no", or "" when not checked
}

// FaultResult is one row of the report.
type FaultResult struct {
	Fault      string   `json:"fault"`
	Targets    []string `json:"targets"`
	InjectS    float64  `json:"inject_s"`
	HealS      float64  `json:"heal_s"`
	HealthyS   float64  `json:"healthy_s"`
	TimeToHeal float64  `json:"time_to_heal_s"`
	Ops        int      `json:"ops"`
	OpErrors   int      `json:"op_errors"`
	GwRequests int      `json:"gateway_requests"`
	GwErrors   int      `json:"gateway_errors"`
	GwErrAfter int      `json:"gateway_errors_after"`
	P99MS      float64  `json:"p99_during_ms"`
	Budget     int      `json:"budget"`
	Lost       []string `json:"lost,omitempty"`
	Checked    int      `json:"registrations_checked"`
	Problems   []string `json:"problems,omitempty"`

	removal   bool
	removalBy time.Duration
	inject    time.Duration
	heal      time.Duration
	healthy   time.Duration
}

// Poll is one read of a node's catalog of the service chaos-live, where
// every node keeps one instance.
type Poll struct {
	At   time.Duration `json:"at_ns"`
	Node string        `json:"node"`
	Live []string      `json:"live"` // nodes whose instance is listed
}

func (r *Run) logf(format string, args ...any) {
	if r.Cfg.Log != nil {
		fmt.Fprintf(r.Cfg.Log, format+"\n", args...)
	}
}

func (r *Run) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.Failures = append(r.Failures, msg)
	r.mu.Unlock()
	r.TL.Add("CHECK FAILED: %s", msg)
}

func (r *Run) voters() int {
	if r.Cfg.Nodes >= 5 {
		return 5
	}
	return 3
}

// affect marks nodes as targeted by a fault: clients stop using them and
// their fault window opens.
func (r *Run) affect(ns ...*Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range ns {
		r.affected[n.Name] = true
		if _, ok := r.open[n.Name]; !ok {
			r.open[n.Name] = len(r.windows)
			r.windows = append(r.windows, Window{Node: n.Name, From: r.TL.Now(), To: Infinity})
		}
	}
}

// windowOnly opens fault windows for nodes that clients go on using.
func (r *Run) windowOnly(ns ...*Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range ns {
		if _, ok := r.open[n.Name]; !ok {
			r.open[n.Name] = len(r.windows)
			r.windows = append(r.windows, Window{Node: n.Name, From: r.TL.Now(), To: Infinity})
		}
		r.extra = append(r.extra, n)
	}
}

// window closes n's fault window windowSlack from now.
func (r *Run) window(n *Node, wiped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.open[n.Name]; ok {
		r.windows[i].To = r.TL.Now() + windowSlack
		r.windows[i].Wiped = r.windows[i].Wiped || wiped
		delete(r.open, n.Name)
	}
}

func (r *Run) unaffect(ns ...*Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range ns {
		delete(r.affected, n.Name)
	}
}

// healthy returns the nodes no fault targets now.
func (r *Run) healthy() []*Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Node
	for _, n := range r.C.nodes {
		if !r.affected[n.Name] {
			out = append(out, n)
		}
	}
	return out
}

// inWindow reports whether node was in a fault window at time at.
func (r *Run) inWindow(node string, at time.Duration) bool {
	for _, w := range r.windows {
		if w.Node == node && at >= w.From && at <= w.To {
			return true
		}
	}
	return false
}

// Execute runs the scenario: form the cluster, start the workloads, inject
// every fault in turn (each healed and checked before the next), restart
// the whole cluster, and check everything. It returns an error only when
// the harness itself could not work; check failures are in r.Failures.
func Execute(cfg Config) (r *Run, err error) {
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	tlog, err := os.Create(filepath.Join(cfg.OutDir, "timeline.txt"))
	if err != nil {
		return nil, err
	}
	defer tlog.Close()
	echo := io.Writer(tlog)
	if cfg.Log != nil {
		echo = io.MultiWriter(tlog, cfg.Log)
	}
	tl := NewTimeline(echo)
	if removed, err := CleanupStale(); err != nil {
		return nil, err
	} else if len(removed) > 0 {
		tl.Add("removed what a killed earlier run left: %s", strings.Join(removed, ", "))
	}
	nw, err := NewNet(cfg.Nodes)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := nw.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	// An interrupted run (Ctrl-C, a CI timeout's SIGTERM) still removes its
	// processes and namespaces; make chaos-cleanup is for SIGKILL.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	interrupted := make(chan struct{})
	defer close(interrupted)
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "chaos: %s: removing the run's nodes and network %s\n", s, nw.ID)
			killAll(nw)
			_ = nw.Close()
			os.Exit(1)
		case <-interrupted:
		}
	}()
	dir, err := os.MkdirTemp("", nsPrefix+nw.ID+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	c, err := NewCluster(nw, cfg.Bin, dir, tl, "--raft-snapshot-count", "100", "--log-level", "info", "--debug-headers")
	if err != nil {
		return nil, err
	}
	r = &Run{Cfg: cfg, C: c, TL: tl, affected: map[string]bool{}, open: map[string]int{}, wipes: map[string][]time.Duration{}}
	defer func() {
		if err != nil {
			r.TL.Add("the run stopped: %v", err)
		}
		r.save()
		logDir := ""
		if len(r.Failures) > 0 || err != nil {
			logDir = cfg.OutDir
		}
		c.Close(logDir)
	}()
	err = r.execute()
	return r, err
}

func (r *Run) execute() error {
	c, cfg := r.C, r.Cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6865726463686173))
	r.TL.Add("network %s: bridge %s, nodes %s1..%d; seed %d", c.Net.ID, c.Net.Bridge, c.Net.Prefix, cfg.Nodes, cfg.Seed)
	if err := c.Start(); err != nil {
		return err
	}
	if err := r.waitWhole(90*time.Second, "the cluster formed"); err != nil {
		return err
	}
	r.TL.Add("the cluster is whole: %d voters", r.voters())
	if err := r.workloadToken(); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if err := r.registerLive(n); err != nil {
			return err
		}
	}
	r.keys = Keys(c.nodes, 3)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	r.reg = NewRegistry(c, r.keys, cfg.Clients, cfg.OpRate, cfg.Seed)
	r.traffic = NewTraffic(c, cfg.GatewayRate, "/hello/", r.healthy)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); r.compact(ctx) }()
	go func() { defer wg.Done(); r.reg.Run(ctx) }()
	go func() { defer wg.Done(); r.traffic.Run(ctx) }()
	go func() { defer wg.Done(); r.poll(ctx) }()
	stopLoad := func() {
		stop()
		wg.Wait()
	}
	defer stopLoad()
	r.TL.Add("workloads started: %d registry clients at %.0f ops/s each on %d keys; gateway GET /hello/ at %.0f/s; compaction every %s",
		cfg.Clients, cfg.OpRate, len(r.keys), cfg.GatewayRate, compactEvery)
	warm := time.NewTimer(5 * time.Second) // a before-phase for the first fault
	<-warm.C

	faults, err := r.selectFaults(rng)
	if err != nil {
		return err
	}
	for _, f := range faults {
		if err := r.one(f, rng); err != nil {
			return err
		}
	}

	// The whole cluster restarts; then nothing acknowledged may be missing.
	stopLoad()
	r.TL.Add("workloads stopped; full-cluster restart")
	if err := r.fullRestart(); err != nil {
		return err
	}
	r.checkNoLoss("after the full-cluster restart", nil)
	r.checkCatalogs("after the full-cluster restart")
	r.checkCatalogTimes()
	r.checkLinearizable()
	r.TL.Add("done: %d failures", len(r.Failures))
	return nil
}

func (r *Run) selectFaults(rng *rand.Rand) ([]Fault, error) {
	all := Faults(r.Cfg.Nodes, r.Cfg.Hold)
	if len(r.Cfg.Faults) == 0 {
		if r.Cfg.Shuffle {
			rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		}
		return all, nil
	}
	var out []Fault
	for _, name := range r.Cfg.Faults {
		found := false
		for _, f := range all {
			if f.Name == name || strings.HasPrefix(f.Name, "split-") && name == "split" {
				out = append(out, f)
				found = true
			}
		}
		if !found {
			var known []string
			for _, f := range all {
				known = append(known, f.Name)
			}
			return nil, fmt.Errorf("no fault %q for %d nodes; known: %s", name, r.Cfg.Nodes, strings.Join(known, ", "))
		}
	}
	if r.Cfg.Shuffle {
		rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	}
	return out, nil
}

// registerLive registers the node's instance of chaos-live, through its own
// API, kept across restarts.
func (r *Run) registerLive(n *Node) error {
	body, _ := json.Marshal(api.RegisterRequest{Address: n.IP, Port: 9, Meta: map[string]string{"v": "live"}, Checks: instanceChecks()})
	return waitFor(60*time.Second, "registering live-"+n.Name, func() error {
		code, e, err := send(context.Background(), opClient, http.MethodPut, n.API()+"/v1/services/chaos-live/instances/live-"+n.Name, body)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %+v %v", code, e, err)
		}
		return nil
	})
}

// one injects f, holds it, heals it, waits for the cluster to be whole and
// runs the checks that hold after every fault.
func (r *Run) one(f Fault, rng *rand.Rand) error {
	res := FaultResult{Fault: f.Name, Budget: f.Budget, removal: f.Removal, removalBy: f.RemovalBy}
	if res.removalBy == 0 {
		res.removalBy = leaseTTL + removalBound
	}
	leader := "none"
	if l, err := r.C.LeaderNode(); err == nil {
		leader = l.Name
	}
	res.inject = r.TL.Now()
	r.hold, r.extra = f.Hold, nil
	r.TL.Add("=== fault %s (hold %s; the leader is %s)", f.Name, f.Hold, leader)
	targets, heal, err := f.inject(r, rng)
	if err != nil {
		return fmt.Errorf("injecting %s: %w", f.Name, err)
	}
	if f.Wipes {
		for _, n := range targets {
			r.mu.Lock()
			r.wipes[n.Name] = append(r.wipes[n.Name], r.TL.Now())
			r.mu.Unlock()
		}
	}
	res.Targets = names(targets)
	if f.Hold > 0 {
		hold := time.NewTimer(f.Hold)
		<-hold.C
	}
	res.heal = r.TL.Now()
	if err := heal(); err != nil {
		return fmt.Errorf("healing %s: %w", f.Name, err)
	}
	if err := r.waitWhole(healTimeout, "the cluster whole after "+f.Name); err != nil {
		r.fail("%s: %v", f.Name, err)
		return fmt.Errorf("the cluster did not heal after %s; stopping the run: %w", f.Name, err)
	}
	res.healthy = r.TL.Now()
	r.TL.Add("the cluster is whole again, %.1fs after healing", (res.healthy - res.heal).Seconds())
	for _, n := range targets {
		if f.Wipes {
			if err := r.registerLive(n); err != nil {
				return err
			}
		}
		r.window(n, f.Wipes)
	}
	for _, n := range r.extra {
		r.window(n, false)
	}
	r.unaffect(targets...)

	resume := r.reg.Pause()
	lost, checked := r.checkNoLoss("after "+f.Name, &res)
	res.Lost, res.Checked = lost, checked
	r.checkCatalogs("after " + f.Name)
	resume()
	r.Results = append(r.Results, res)
	return nil
}

// waitWhole waits for the cluster to be whole, writing into the timeline
// what it is still waiting for every 5 seconds, so a slow heal can be read.
func (r *Run) waitWhole(timeout time.Duration, what string) error {
	last := time.Now()
	return waitFor(timeout, what, func() error {
		err := r.C.Healthy(r.voters())
		if err != nil && time.Since(last) >= 5*time.Second {
			last = time.Now()
			r.TL.Add("still waiting: %v", err)
		}
		return err
	})
}

// fullRestart stops every node gracefully at once and starts them again.
func (r *Run) fullRestart() error {
	var wg sync.WaitGroup
	errs := make([]error, len(r.C.nodes))
	for i, n := range r.C.nodes {
		r.affect(n)
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.Stop(60 * time.Second) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			r.fail("full-cluster restart: %v", err)
		}
	}
	r.TL.Add("every node stopped; starting them all")
	if err := r.C.Start(); err != nil {
		return err
	}
	if err := r.waitWhole(healTimeout, "the cluster whole after the full restart"); err != nil {
		r.fail("%v", err)
		return err
	}
	r.TL.Add("the cluster is whole after the full restart")
	for _, n := range r.C.nodes {
		r.window(n, false)
	}
	r.unaffect(r.C.nodes...)
	return nil
}

// expected returns, from the history so far, the value each key must hold
// now ("" for absent): keys whose last write was acknowledged, with no
// write of unknown outcome ever (it may still land); a registration only if
// its owner's data was not wiped since.
func (r *Run) expected() map[string]string {
	ops := r.reg.Ops()
	uncertain := map[string]bool{}
	last := map[string]Op{}
	for _, op := range ops {
		if op.Kind != OpRegister && op.Kind != OpDeregister {
			continue
		}
		if op.Status == Unknown {
			uncertain[op.Key] = true
			continue
		}
		if op.Status != Ok && op.Status != NotFound {
			continue
		}
		if l, ok := last[op.Key]; !ok || op.Call > l.Return {
			last[op.Key] = op
		} else if op.Return > l.Call {
			uncertain[op.Key] = true // concurrent acknowledged writes
		}
	}
	out := map[string]string{}
	for k, op := range last {
		if uncertain[k] {
			continue
		}
		if op.Kind == OpDeregister {
			out[k] = "" // it must stay gone
			continue
		}
		owner := ownerOf(k, r.keys)
		wiped := false
		r.mu.Lock()
		for _, at := range r.wipes[owner] {
			if at > op.Call {
				wiped = true
			}
		}
		r.mu.Unlock()
		if !wiped {
			out[k] = op.Value
		}
	}
	for _, n := range r.C.nodes {
		out["chaos-live/live-"+n.Name] = "live"
	}
	return out
}

// readAll reads every instance of the workload's services and chaos-live
// through node n with a consistent read.
func readAll(n *Node, services []string, value func(api.Instance) string) (map[string]string, int64, error) {
	got := map[string]string{}
	var rev int64
	for _, s := range services {
		var sr api.ServiceResponse
		code, err := getJSON(context.Background(), opClient, n.API()+"/v1/services/"+s+"?consistent", &sr)
		if err != nil || (code != 200 && code != 404) {
			return nil, 0, fmt.Errorf("%s: consistent read of %s: %d %v", n.Name, s, code, err)
		}
		for _, in := range sr.Instances {
			got[s+"/"+in.ID] = value(in)
		}
		rev = max(rev, sr.Revision)
	}
	return got, rev, nil
}

// checkNoLoss: every acknowledged registration still there (polling: a
// lapsed lease is re-registered within a bound).
func (r *Run) checkNoLoss(when string, res *FaultResult) (lost []string, checked int) {
	want := r.expected()
	services := append([]string{"chaos-live"}, workloadServices...)
	var last error
	err := waitFor(30*time.Second, "every acknowledged registration "+when, func() error {
		got, _, err := readAll(r.C.nodes[0], services, registered)
		if err != nil {
			last = err
			return err
		}
		lost = lost[:0]
		for k, v := range want {
			switch g := got[k]; {
			case g == v:
			case v == "":
				lost = append(lost, fmt.Sprintf("%s deregistered, but back with %q", k, g))
			default:
				lost = append(lost, fmt.Sprintf("%s=%s (read %q)", k, v, g))
			}
		}
		if len(lost) > 0 {
			sort.Strings(lost)
			return fmt.Errorf("missing: %s", strings.Join(lost, ", "))
		}
		return nil
	})
	if err != nil {
		r.fail("no-loss %s: %v", when, err)
		if len(lost) == 0 && last != nil {
			lost = []string{"(could not read: " + last.Error() + ")"}
		}
	} else {
		present := 0
		for _, v := range want {
			if v != "" {
				present++
			}
		}
		r.TL.Add("no-loss %s: %d acknowledged registrations all present, %d deregistrations all still gone", when, present, len(want)-present)
	}
	return lost, len(want)
}

// checkCatalogs: every node's catalog equals the registry at a common
// revision, for the workload's services and the built-in ones.
func (r *Run) checkCatalogs(when string) {
	services := append([]string{"chaos-live", "hello", "echo"}, workloadServices...)
	err := waitFor(30*time.Second, "every catalog equal to the registry "+when, func() error {
		want, rev, err := readAll(r.C.nodes[0], services, withHealth)
		if err != nil {
			return err
		}
		for _, n := range r.C.nodes {
			got := map[string]string{}
			for _, s := range services {
				var sr api.ServiceResponse
				code, err := getJSON(context.Background(), client, n.API()+"/v1/services/"+s, &sr)
				if err != nil || (code != 200 && code != 404) {
					return fmt.Errorf("%s: catalog of %s: %d %v", n.Name, s, code, err)
				}
				if code == 200 && sr.Revision < rev {
					return fmt.Errorf("%s: catalog at revision %d, registry at %d", n.Name, sr.Revision, rev)
				}
				for _, in := range sr.Instances {
					got[s+"/"+in.ID] = withHealth(in)
				}
			}
			if d := diff(want, got); d != "" {
				return fmt.Errorf("%s's catalog differs from the registry at revision %d: %s", n.Name, rev, d)
			}
		}
		return nil
	})
	if err != nil {
		r.fail("catalogs %s: %v", when, err)
		return
	}
	r.TL.Add("catalogs %s: every node's equals the registry", when)
}

// registered is what the no-loss check compares: the registration's
// value.
func registered(in api.Instance) string { return in.Meta["v"] }

// withHealth is what the catalog check compares: the value, health and
// maintenance (check transitions are registry writes too).
func withHealth(in api.Instance) string {
	return in.Meta["v"] + " " + in.Health + " " + in.Maintenance
}

func diff(want, got map[string]string) string {
	var d []string
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			d = append(d, fmt.Sprintf("%s: registry %q, catalog %q", k, v, g))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("%s: not in the registry, catalog %q", k, v))
		}
	}
	sort.Strings(d)
	return strings.Join(d, "; ")
}

// poll reads every node's catalog of chaos-live twice a second.
func (r *Run) poll(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	pc := &http.Client{Timeout: 400 * time.Millisecond, Transport: apiTransport(workload)}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, n := range r.C.nodes {
			at := r.TL.Now()
			var sr api.ServiceResponse
			code, err := getJSON(ctx, pc, n.API()+"/v1/services/chaos-live", &sr)
			if err != nil || (code != 200 && code != 404) {
				continue
			}
			p := Poll{At: at, Node: n.Name}
			for _, in := range sr.Instances {
				p.Live = append(p.Live, in.Node)
			}
			r.mu.Lock()
			r.polls = append(r.polls, p)
			r.mu.Unlock()
		}
	}
}

// checkCatalogTimes: a target's instance leaves every other catalog within
// lease TTL plus removalBound when the fault keeps it from renewing; the
// instance of a node in no fault window never leaves the catalog of a node
// in none.
func (r *Run) checkCatalogTimes() {
	r.mu.Lock()
	polls := append([]Poll(nil), r.polls...)
	r.mu.Unlock()
	for _, res := range r.Results {
		if !res.removal {
			continue
		}
		deadline := res.inject + res.removalBy
		for _, t := range res.Targets {
			seen := 0
			for _, p := range polls {
				if p.Node == t || contains(res.Targets, p.Node) || p.At < deadline || p.At > res.heal {
					continue
				}
				seen++
				if contains(p.Live, t) {
					r.fail("%s: %s's instance still in %s's catalog %.1fs after the fault (bound %s)", res.Fault, t, p.Node, (p.At - res.inject).Seconds(), res.removalBy)
					break
				}
			}
			if seen == 0 {
				r.fail("%s: no catalog was read between %s after the fault and its heal, so the removal of %s's instance is unchecked (hold the fault longer)", res.Fault, res.removalBy, t)
			}
		}
	}
	bad := 0
	for _, p := range polls {
		if r.inWindow(p.Node, p.At) {
			continue
		}
		for _, n := range r.C.nodes {
			if r.inWindow(n.Name, p.At) || contains(p.Live, n.Name) {
				continue
			}
			bad++
			if bad <= 5 {
				r.fail("%s's instance of chaos-live missing from %s's catalog at %.1fs, with neither node in a fault window", n.Name, p.Node, p.At.Seconds())
			}
		}
	}
	if bad == 0 {
		r.TL.Add("catalog times: %d catalog reads, every removal in time, no live instance ever missing", len(polls))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkLinearizable checks the registry history with porcupine.
func (r *Run) checkLinearizable() {
	r.mu.Lock()
	windows := append([]Window(nil), r.windows...)
	r.mu.Unlock()
	history := History(r.reg.Ops(), r.keys, windows)
	res, info := porcupine.CheckOperationsVerbose(Model(), history, 2*time.Minute)
	switch res {
	case porcupine.Ok:
		r.TL.Add("linearizable: %d operations on %d keys", len(history), len(r.keys))
	case porcupine.Illegal:
		path := filepath.Join(r.Cfg.OutDir, "linearizability.html")
		if err := porcupine.VisualizePath(Model(), info, path); err != nil {
			path = "(visualization failed: " + err.Error() + ")"
		}
		r.fail("the registry history is not linearizable: see %s", path)
	default:
		r.fail("the linearizability check of %d operations did not finish in 2 minutes", len(history))
	}
	r.mu.Lock()
	r.linearizable = map[bool]string{true: "yes", false: "no"}[res == porcupine.Ok]
	r.mu.Unlock()
}

// workloadToken makes the API token the workload registers with, scoped
// to its services (service:chaos-), with the management token.
func (r *Run) workloadToken() error {
	body, _ := json.Marshal(api.ACLTokenRequest{Name: "chaos-workload", Policies: []string{"service:chaos-"}})
	var last error
	for _, n := range r.C.nodes {
		req, err := http.NewRequest(http.MethodPost, n.API()+"/v1/acl/tokens", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			last = err
			continue
		}
		var t api.ACLToken
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &t) != nil || t.Secret == "" {
			last = fmt.Errorf("POST /v1/acl/tokens on %s: %d %s", n.Name, resp.StatusCode, b)
			continue
		}
		workloadToken.Store(&t.Secret)
		r.TL.Add("the workload uses API token %s (policy service:chaos-); the harness, the management token", t.Name)
		return nil
	}
	return fmt.Errorf("making the workload's API token: %w", last)
}
