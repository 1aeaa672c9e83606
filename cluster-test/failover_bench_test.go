package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// The failover benchmarks (run by bench/failover.sh, issue 4, benchmarks
// 2-4) put a constant 1000 GET/s on /hello/ through node1's gateway and
// inject a fault into the other nodes: kill -9, SIGSTOP for 10 s, or
// SIGSTOP of two nodes at once (no registry quorum). They report errors
// and latency (p50, p99, max) for three phases: before, the 5 s before the
// fault; during, the 10 s after it plus the requests in flight when it
// came; after, the 5 s after that. Use -benchtime=1x: each runs its
// scenario once, on fresh nodes, and keeps the node logs and every request
// (requests.csv) in the artifacts dir.
//
// The load is open-loop: request i is due at start + i/rate whatever
// happened to the requests before it, and its latency is measured from
// that due time, so a stall shows up in every request it delays instead of
// only in the one that was stuck (no coordinated omission). A request
// fails when it gets no 200 within failoverClientTimeout.
const (
	failoverRate          = 1000 // requests per second
	failoverClientTimeout = 5 * time.Second
	// Not counted: connections being opened, the registry settling after
	// the third voter's promotion.
	failoverWarmup = 3 * time.Second
	failoverBefore = 5 * time.Second
	failoverDuring = 10 * time.Second
	failoverAfter  = 5 * time.Second
)

// BenchmarkFailoverCrash: kill -9 of node2. Goal: 0 errors during.
func BenchmarkFailoverCrash(b *testing.B) {
	for _, v := range []struct{ name, hedge string }{{"hedge=off", "off"}, {"hedge=auto", "auto"}} {
		b.Run(v.name, func(b *testing.B) {
			nodes := failoverCluster(b, "--hedge-after", v.hedge)
			runFailover(b, nodes, failoverFault{
				what:   "kill -9 node2",
				inject: func() { nodes[1].signal(syscall.SIGKILL); nodes[1].wait(10 * time.Second) },
			})
		})
	}
}

// BenchmarkFailoverHang: node2 stopped by SIGSTOP for 10 s; the kernel
// still accepts its connections. Goal with --hedge-after auto: 0 errors,
// p99 under 1 s during.
func BenchmarkFailoverHang(b *testing.B) {
	for _, v := range []struct{ name, hedge string }{{"hedge=auto", "auto"}, {"hedge=off", "off"}} {
		b.Run(v.name, func(b *testing.B) {
			nodes := failoverCluster(b, "--hedge-after", v.hedge)
			runFailover(b, nodes, failoverFault{
				what:    "SIGSTOP node2 for 10s",
				inject:  func() { stopNodes(b, nodes[1]) },
				recover: func() { contNodes(nodes[1]) },
			})
		})
	}
}

// BenchmarkRegistryOutage: node2 and node3 stopped by SIGSTOP for 10 s, so
// the registry has no quorum; every node hosts hello. Goal: 0 errors
// through node1 for the instances on node1 (prefer-local sends node1's
// traffic to its own instance only; the others also show what the stopped
// nodes' instances cost).
func BenchmarkRegistryOutage(b *testing.B) {
	for _, v := range []struct {
		name string
		args []string
	}{
		{"prefer-local", []string{"--prefer-local"}},
		{"hedge=auto", []string{"--hedge-after", "auto"}},
		{"hedge=off", []string{"--hedge-after", "off"}},
	} {
		b.Run(v.name, func(b *testing.B) {
			nodes := failoverCluster(b, v.args...)
			var watch *readyWatch
			runFailover(b, nodes, failoverFault{
				what: "SIGSTOP node2 and node3 for 10s",
				inject: func() {
					stopNodes(b, nodes[1], nodes[2])
					watch = watchReady(nodes[0])
				},
				recover: func() {
					watch.stop()
					contNodes(nodes[1], nodes[2])
				},
			})
			// The outage must really have been one: node1 reports that it
			// lost its registry.
			statuses := watch.seen()
			b.Logf("node1 /readyz during the outage: %s", strings.Join(statuses, "; "))
			degraded := 0.0
			if slices.ContainsFunc(statuses, func(s string) bool { return strings.Contains(s, " degraded") }) {
				degraded = 1
			}
			b.ReportMetric(degraded, "n1-degraded")
		})
	}
}

// failoverFault is what a benchmark does to the cluster: inject at the
// start of the "during" phase, recover (if set) at its end.
type failoverFault struct {
	what    string
	inject  func()
	recover func()
}

// failoverCluster starts three nodes with the same extra agent arguments
// (node2 and node3 joining node1), and waits until every node's catalog
// has all three hello instances and the registry has three voters. Their
// gateways name the serving node (--debug-headers), which the benchmark
// counts.
func failoverCluster(b *testing.B, args ...string) []*node {
	b.Helper()
	c := newCluster(b)
	saveFailoverLogs(b, c)
	args = append([]string{"--debug-headers"}, args...)
	join := []string{"--join", c.ip(1)}
	nodes := []*node{c.add(1, args...), c.add(2, append(join, args...)...), c.add(3, append(join, args...)...)}
	for _, n := range nodes {
		n.start()
	}
	for _, n := range nodes {
		waitUntil(b, 60*time.Second, n.Name+" ready", n.ready)
	}
	// Every catalog lists the three hello instances and every gateway
	// answers; which instance answers is the balancer's business (with
	// --prefer-local, always the gateway's own).
	waitUntil(b, 30*time.Second, "three hello instances in every catalog, every gateway routing", func() error {
		for _, n := range nodes {
			ids, err := instanceIDs(n, "hello")
			if err != nil {
				return err
			}
			if len(ids) != 3 {
				return fmt.Errorf("%s's catalog has hello instances %v", n.Name, ids)
			}
			if _, err := helloFrom(n.gateway()); err != nil {
				return err
			}
		}
		return nil
	})
	waitUntil(b, 60*time.Second, "three voters", func() error {
		m, err := nodes[0].members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
	return nodes
}

// saveFailoverLogs keeps every node's log in the artifacts dir even when
// the benchmark passes (the harness keeps them only on failure or -v).
func saveFailoverLogs(b *testing.B, c *cluster) {
	b.Cleanup(func() {
		if testing.Verbose() || b.Failed() {
			return // the harness writes them
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			if n.log != nil {
				_ = os.WriteFile(filepath.Join(artifactDir(b), n.Name+".log"), []byte(n.logs()), 0o644)
			}
		}
	})
}

// stopNodes SIGSTOPs nodes; the benchmark's cleanup continues them should
// it end before contNodes does.
func stopNodes(b *testing.B, nodes ...*node) {
	for _, n := range nodes {
		pid := n.cmd.Process.Pid
		b.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
		n.signal(syscall.SIGSTOP)
	}
}

func contNodes(nodes ...*node) {
	for _, n := range nodes {
		_ = syscall.Kill(n.cmd.Process.Pid, syscall.SIGCONT)
	}
}

// runFailover runs the load through node1's gateway, injects the fault
// after the warm-up and the "before" phase, recovers from it after the
// "during" phase, and reports each phase.
func runFailover(b *testing.B, nodes []*node, f failoverFault) {
	b.Helper()
	load1 := loadavg()
	if m, err := nodes[0].members(); err == nil {
		b.Logf("registry leader: %s", m.Leader)
	}
	before := gatewayCounters(nodes[0])
	// A second more than the phases need: the fault comes a little after
	// its due time.
	total := failoverWarmup + failoverBefore + failoverDuring + failoverAfter + time.Second
	l := startRateLoad(nodes[0].gateway()+"/hello/", failoverRate, total)
	defer l.stop()

	l.waitIssued(b, failoverWarmup+failoverBefore)
	// The fault's time is when its first signal goes out, not when inject
	// returns (a kill -9 waits for the process's exit).
	faultAt := time.Since(l.start)
	f.inject()
	b.Logf("%s at %s (%s)", f.what, faultAt.Round(time.Millisecond), l.start.Add(faultAt).UTC().Format("15:04:05.000"))
	if f.recover != nil {
		l.waitIssued(b, faultAt+failoverDuring)
		f.recover()
		b.Logf("recovered at %s", time.Since(l.start).Round(time.Millisecond))
	}
	samples := l.wait()
	after := gatewayCounters(nodes[0])
	load2 := loadavg()

	// A request still in flight when the fault came counts as during: the
	// fault is what it met.
	inFlight := func(x sample) bool { return x.due < faultAt && x.due+x.latency > faultAt }
	phases := []struct {
		name string
		in   func(sample) bool
	}{
		{"before", func(x sample) bool { return x.due >= faultAt-failoverBefore && x.due < faultAt && !inFlight(x) }},
		{"during", func(x sample) bool {
			return inFlight(x) && x.due >= faultAt-failoverBefore || x.due >= faultAt && x.due < faultAt+failoverDuring
		}},
		{"after", func(x sample) bool {
			return x.due >= faultAt+failoverDuring && x.due < faultAt+failoverDuring+failoverAfter
		}},
	}
	for _, p := range phases {
		s := summarize(samples, p.in)
		b.ReportMetric(float64(s.n), p.name+"-reqs")
		b.ReportMetric(float64(s.errors), p.name+"-errors")
		b.ReportMetric(ms(s.p50), p.name+"-p50-ms")
		b.ReportMetric(ms(s.p99), p.name+"-p99-ms")
		b.ReportMetric(ms(s.max), p.name+"-max-ms")
		b.Logf("%-6s %5d requests, %4d errors, p50 %s p99 %s max %s, answered by %v; errors: %v",
			p.name, s.n, s.errors, s.p50, s.p99, s.max, s.upstreams, s.errKinds)
	}
	b.ReportMetric(load1, "loadavg1-start")
	b.ReportMetric(load2, "loadavg1-end")
	b.ReportMetric(0, "ns/op")
	for _, k := range slices.Sorted(maps.Keys(after)) {
		b.Logf("node1 gateway %s: +%g", k, after[k]-before[k])
	}
	b.Logf("load average (1 min) %.2f at the start, %.2f at the end", load1, load2)
	logTimeline(b, samples, faultAt)
	writeSamples(b, samples, faultAt)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// waitIssued waits until the load has sent every request due before
// offset from its start: the phases are counted in the load's requests, so
// a load that falls behind its schedule delays the fault rather than
// shortening a phase. It fails b when that takes 30 s longer than due.
func (l *rateLoad) waitIssued(b *testing.B, offset time.Duration) {
	b.Helper()
	want := min(int64(offset.Seconds()*float64(failoverRate)), int64(len(l.samples)))
	deadline := time.NewTimer(time.Until(l.start.Add(offset + 30*time.Second)))
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for l.issued.Load() < want {
		select {
		case <-deadline.C:
			b.Fatalf("the load sent %d of the %d requests due by %s", l.issued.Load(), want, offset)
		case <-tick.C:
		}
	}
}

// sample is one request of the load.
type sample struct {
	due      time.Duration // since the load's start
	latency  time.Duration // from due to the whole answer read, or the error
	upstream string        // X-Herd-Upstream of a 200
	err      string        // "" for a 200
}

// rateLoad sends GETs to url at a constant rate, open-loop.
type rateLoad struct {
	url     string
	client  *http.Client
	start   time.Time
	samples []sample
	cancel  context.CancelFunc
	ctx     context.Context
	sched   chan struct{} // closed when the scheduler is done
	wg      sync.WaitGroup
	issued  atomic.Int64 // requests sent so far
}

func startRateLoad(url string, rate int, d time.Duration) *rateLoad {
	tr := &http.Transport{
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &rateLoad{
		url:     url,
		client:  &http.Client{Transport: tr, Timeout: failoverClientTimeout},
		start:   time.Now(),
		samples: make([]sample, int(d.Seconds()*float64(rate))),
		ctx:     ctx,
		cancel:  cancel,
		sched:   make(chan struct{}),
	}
	interval := time.Second / time.Duration(rate)
	go func() {
		defer close(l.sched)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for i := range l.samples {
			due := time.Duration(i) * interval
			if wait := time.Until(l.start.Add(due)); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return
				}
			}
			l.wg.Add(1)
			l.issued.Add(1)
			go l.one(i, due)
		}
	}()
	return l
}

func (l *rateLoad) one(i int, due time.Duration) {
	defer l.wg.Done()
	s := &l.samples[i]
	s.due = due
	req, err := http.NewRequestWithContext(l.ctx, http.MethodGet, l.url, nil)
	if err != nil {
		s.err = err.Error()
		return
	}
	resp, err := l.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	s.latency = time.Since(l.start.Add(due))
	switch {
	case err != nil:
		s.err = errKind(err)
	case resp.StatusCode != http.StatusOK:
		s.err = "status " + strconv.Itoa(resp.StatusCode)
	default:
		s.upstream = resp.Header.Get("X-Herd-Upstream")
	}
}

// errKind shortens a client error to its kind, for counting.
func errKind(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Client.Timeout"):
		return "client timeout"
	case strings.Contains(msg, "connection reset"):
		return "reset"
	case strings.Contains(msg, "EOF"):
		return "EOF"
	}
	return msg
}

// wait returns the samples once every scheduled request has ended.
func (l *rateLoad) wait() []sample {
	<-l.sched
	l.wg.Wait()
	return l.samples
}

// stop ends the load early (the benchmark failed) and waits for it.
func (l *rateLoad) stop() {
	l.cancel()
	<-l.sched
	l.wg.Wait()
	l.client.CloseIdleConnections()
}

// phaseStats summarizes the requests of one phase. Errors count in the
// latencies with the time they took to fail.
type phaseStats struct {
	n, errors     int
	p50, p99, max time.Duration
	upstreams     map[string]int
	errKinds      map[string]int
}

func summarize(samples []sample, in func(sample) bool) phaseStats {
	s := phaseStats{upstreams: map[string]int{}, errKinds: map[string]int{}}
	var lat []time.Duration
	for _, x := range samples {
		if !in(x) {
			continue
		}
		s.n++
		lat = append(lat, x.latency)
		if x.err != "" {
			s.errors++
			s.errKinds[x.err]++
		} else {
			s.upstreams[x.upstream]++
		}
	}
	if len(lat) == 0 {
		return s
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	s.p50, s.p99, s.max = q(0.50), q(0.99), lat[len(lat)-1]
	return s
}

// logTimeline logs each second around the fault: requests, errors, p99
// and who answered.
func logTimeline(b *testing.B, samples []sample, faultAt time.Duration) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "per second (t=0: the fault):\n")
	for sec := -2; sec < int((failoverDuring+failoverAfter)/time.Second); sec++ {
		from := faultAt + time.Duration(sec)*time.Second
		s := summarize(samples, func(x sample) bool { return x.due >= from && x.due < from+time.Second })
		fmt.Fprintf(&sb, "  t=%+3ds %4d req %4d err p99 %-12s max %-12s %v %v\n", sec, s.n, s.errors, s.p99.Round(time.Microsecond), s.max.Round(time.Microsecond), s.upstreams, s.errKinds)
	}
	b.Log(sb.String())
}

// writeSamples keeps every request in the artifacts dir as CSV.
func writeSamples(b *testing.B, samples []sample, faultAt time.Duration) {
	path := filepath.Join(artifactDir(b), "requests.csv")
	f, err := os.Create(path)
	if err != nil {
		b.Logf("requests.csv: %v", err)
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "due_since_fault_ms,latency_ms,upstream,error")
	for _, s := range samples {
		fmt.Fprintf(w, "%.3f,%.3f,%s,%q\n", ms(s.due-faultAt), ms(s.latency), s.upstream, s.err)
	}
	if err := w.Flush(); err != nil {
		b.Logf("requests.csv: %v", err)
		return
	}
	b.Logf("every request: %s", path)
}

// loadavg is the 1-minute load average, -1 if unknown.
func loadavg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// gatewayCounters scrapes the node's gateway counters for hello (retries,
// hedges, ejections, upstream errors), empty if /metrics does not answer.
func gatewayCounters(n *node) map[string]float64 {
	out := map[string]float64{}
	resp, err := httpClient.Get(n.api() + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"herd_gateway_retries_total", "herd_gateway_hedges_total", "herd_gateway_ejections_total", "herd_gateway_upstream_errors_total"} {
			if !strings.HasPrefix(line, name) || !strings.Contains(line, `service="hello"`) {
				continue
			}
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				key := strings.TrimPrefix(strings.TrimSuffix(name, "_total"), "herd_gateway_")
				if _, labels, ok := strings.Cut(f[0], "{"); ok && name == "herd_gateway_upstream_errors_total" {
					key += "{" + labels
				}
				out[key] += v
			}
		}
	}
	return out
}

// readyWatch polls a node's /readyz and keeps each change of its answer,
// with the time since the watch started.
type readyWatch struct {
	mu       sync.Mutex
	last     string
	statuses []string
	done     chan struct{}
	stopped  chan struct{}
}

func watchReady(n *node) *readyWatch {
	w := &readyWatch{done: make(chan struct{}), stopped: make(chan struct{})}
	client := &http.Client{Timeout: time.Second, Transport: httpClient.Transport}
	start := time.Now()
	go func() {
		defer close(w.stopped)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			var rd api.Readiness
			status := "no answer"
			if resp, err := client.Get(n.api() + "/readyz"); err == nil {
				if json.NewDecoder(resp.Body).Decode(&rd) == nil {
					status = rd.Status + ": " + rd.Reason
				}
				resp.Body.Close()
			}
			w.mu.Lock()
			if status != w.last {
				w.last = status
				w.statuses = append(w.statuses, fmt.Sprintf("+%s %s", time.Since(start).Round(100*time.Millisecond), status))
			}
			w.mu.Unlock()
			select {
			case <-w.done:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *readyWatch) stop() {
	close(w.done)
	<-w.stopped
}

func (w *readyWatch) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.statuses)
}
