package health

import (
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/internal/testnet"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// changes records OnChange calls and the statuses they saw.
type changes struct {
	mu      sync.Mutex
	r       *Runner
	seen    []string // status of the first check at each change
	expired []string
}

func newRunner(t *testing.T) (*Runner, *changes) {
	t.Helper()
	ch := &changes{}
	r := New(Config{
		OnChange: func(service, id string) {
			cs, _ := ch.r.Checks(service, id)
			ch.mu.Lock()
			if len(cs) > 0 {
				ch.seen = append(ch.seen, cs[0].Status)
			}
			ch.mu.Unlock()
		},
		OnExpire: func(service, id, check string) {
			ch.mu.Lock()
			ch.expired = append(ch.expired, service+"/"+id+"/"+check)
			ch.mu.Unlock()
		},
	})
	ch.r = r
	t.Cleanup(r.Close)
	return r, ch
}

func (c *changes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.seen...)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func status(r *Runner, service, id string) string {
	cs, ok := r.Checks(service, id)
	if !ok || len(cs) == 0 {
		return ""
	}
	return cs[0].Status
}

func instanceAt(t *testing.T, addr string, checks ...api.Check) api.Instance {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	in := api.Instance{Service: "web", ID: "web-1", Node: "n1", Address: host, Port: p, Checks: checks}
	in.Normalize()
	if err := in.Validate(); err != nil {
		t.Fatal(err)
	}
	return in
}

const fast = api.Duration(100 * time.Millisecond)

// An http check follows a real server: 2xx passing, 429 warning, 500
// critical after failures_before_critical runs, passing again after
// success_before_passing runs; the output and counters are kept.
func TestHTTPCheckThresholds(t *testing.T) {
	var code atomic.Int64
	code.Store(200)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/health" || r.Header.Get("User-Agent") != "herd-health-check" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(int(code.Load()))
		w.Write([]byte("state " + strconv.Itoa(int(code.Load()))))
	}))
	defer srv.Close()
	r, ch := newRunner(t)
	in := instanceAt(t, srv.Listener.Addr().String(), api.Check{Type: api.CheckHTTP, Path: "/health", Interval: fast,
		SuccessBeforePassing: 2, FailuresBeforeWarning: 2, FailuresBeforeCritical: 4})
	if in.Health != api.HealthCritical {
		t.Fatalf("a new instance with a check is %s, want critical until it passes", in.Health)
	}
	r.Set(in)
	waitFor(t, 5*time.Second, "passing", func() bool { return status(r, "web", "web-1") == api.HealthPassing })
	res := r.Results("web")
	if len(res) != 1 || res[0].Successes < 2 || !strings.Contains(res[0].Output, "200 OK") || !strings.Contains(res[0].Output, "state 200") {
		t.Fatalf("results: %+v", res)
	}

	code.Store(500)
	waitFor(t, 5*time.Second, "warning after 2 failures", func() bool { return status(r, "web", "web-1") == api.HealthWarning })
	waitFor(t, 5*time.Second, "critical after 4 failures", func() bool { return status(r, "web", "web-1") == api.HealthCritical })
	if f := r.Results("web")[0].Failures; f < 4 {
		t.Fatalf("critical after %d failures, want 4", f)
	}
	code.Store(429)
	// 429 is a warning result: after the failures the check says warning.
	waitFor(t, 5*time.Second, "warning on 429", func() bool { return status(r, "web", "web-1") == api.HealthWarning })
	code.Store(200)
	waitFor(t, 5*time.Second, "passing again", func() bool { return status(r, "web", "web-1") == api.HealthPassing })
	got := strings.Join(ch.list(), ",")
	if got != "passing,warning,critical,warning,passing" {
		t.Fatalf("changes: %s", got)
	}
	runs, transitions := r.Stats()
	if transitions != 5 || runs < 9 {
		t.Fatalf("runs %d transitions %d", runs, transitions)
	}
}

// A service that fails every other run does not flap with thresholds: no
// status change at all after it first passes.
func TestFlappingServiceDoesNotFlap(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	r, ch := newRunner(t)
	r.Set(instanceAt(t, srv.Listener.Addr().String(), api.Check{Type: api.CheckHTTP, Interval: fast, Status: api.HealthPassing,
		SuccessBeforePassing: 3, FailuresBeforeCritical: 3}))
	waitFor(t, 10*time.Second, "20 runs", func() bool { return n.Load() >= 20 })
	if got := ch.list(); len(got) != 0 || status(r, "web", "web-1") != api.HealthPassing {
		t.Fatalf("a flapping service changed status: %v", got)
	}
}

// Redirects are not followed; a server that does not answer within the
// timeout is critical; so is a port where nothing listens.
func TestHTTPCheckRedirectTimeoutRefused(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	defer close(release)
	closed := testnet.Refusing(t).String()
	r, _ := newRunner(t)
	addr := srv.Listener.Addr().String()
	cases := []struct {
		id, addr, path, want string
	}{
		{"redirect", addr, "/redirect", "do not follow redirects"},
		{"slow", addr, "/slow", "timed out"},
		{"refused", closed, "/", "refused"},
	}
	for _, c := range cases {
		in := instanceAt(t, c.addr, api.Check{Type: api.CheckHTTP, Path: c.path, Interval: api.Duration(200 * time.Millisecond),
			Timeout: api.Duration(100 * time.Millisecond), Status: api.HealthPassing})
		in.ID = c.id
		r.Set(in)
	}
	for _, c := range cases {
		waitFor(t, 5*time.Second, c.id+" critical", func() bool { return status(r, "web", c.id) == api.HealthCritical })
		for _, res := range r.Results("web") {
			if res.ID == c.id && !strings.Contains(res.Output, c.want) {
				t.Errorf("%s: output %q, want it to say %q", c.id, res.Output, c.want)
			}
		}
	}
}

// A tcp check passes while the port accepts and goes critical when it
// closes.
func TestTCPCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	r, _ := newRunner(t)
	r.Set(instanceAt(t, ln.Addr().String(), api.Check{Type: api.CheckTCP, Interval: fast}))
	waitFor(t, 5*time.Second, "passing", func() bool { return status(r, "web", "web-1") == api.HealthPassing })
	ln.Close()
	waitFor(t, 5*time.Second, "critical", func() bool { return status(r, "web", "web-1") == api.HealthCritical })
}

// A grpc check follows grpc-go's own health server: SERVING passing,
// NOT_SERVING critical, for the whole server and for a named service.
func TestGRPCCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	defer gs.Stop()
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_NOT_SERVING)
	r, _ := newRunner(t)
	whole := instanceAt(t, ln.Addr().String(), api.Check{Type: api.CheckGRPC, Interval: fast})
	named := instanceAt(t, ln.Addr().String(), api.Check{Type: api.CheckGRPC, GRPCService: "orders", Interval: fast, Status: api.HealthPassing})
	named.ID = "web-2"
	r.Set(whole)
	r.Set(named)
	waitFor(t, 5*time.Second, "the server passing", func() bool { return status(r, "web", "web-1") == api.HealthPassing })
	waitFor(t, 5*time.Second, "orders critical", func() bool { return status(r, "web", "web-2") == api.HealthCritical })
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, 5*time.Second, "orders passing", func() bool { return status(r, "web", "web-2") == api.HealthPassing })
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, 5*time.Second, "the server critical", func() bool { return status(r, "web", "web-1") == api.HealthCritical })
}

// A ttl check takes its service's reports and goes critical when they stop;
// deregister_critical_after then expires the instance once.
func TestTTLCheckAndDeregisterCriticalAfter(t *testing.T) {
	r, ch := newRunner(t)
	in := instanceAt(t, "127.0.0.1:9", api.Check{Name: "alive", Type: api.CheckTTL, TTL: api.Duration(300 * time.Millisecond),
		DeregisterCriticalAfter: api.Duration(time.Second)})
	r.Set(in)
	if err := r.Report("web", "web-1", "alive", api.HealthPassing, "all good"); err != nil {
		t.Fatal(err)
	}
	if s := status(r, "web", "web-1"); s != api.HealthPassing {
		t.Fatalf("after a pass: %s", s)
	}
	if res := r.Results("web"); res[0].Output != "all good" {
		t.Fatalf("note: %q", res[0].Output)
	}
	// Reports every 50 ms (the service's schedule) keep it passing for
	// three TTLs.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(time.Second); time.Now().Before(end); <-tick.C {
		if err := r.Report("web", "web-1", "alive", api.HealthPassing, ""); err != nil {
			t.Fatal(err)
		}
		if s := status(r, "web", "web-1"); s != api.HealthPassing {
			t.Fatalf("reported every 50ms, yet %s", s)
		}
	}
	waitFor(t, 5*time.Second, "critical once reports stop", func() bool { return status(r, "web", "web-1") == api.HealthCritical })
	if res := r.Results("web"); !strings.Contains(res[0].Output, "TTL of 300ms expired") {
		t.Fatalf("output %q", res[0].Output)
	}
	waitFor(t, 5*time.Second, "expired", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return len(ch.expired) == 1 && ch.expired[0] == "web/web-1/alive"
	})
	for _, bad := range []struct {
		id, check string
		want      error
	}{{"nope", "alive", ErrUnknownInstance}, {"web-1", "nope", ErrUnknownCheck}} {
		if err := r.Report("web", bad.id, bad.check, api.HealthPassing, ""); err == nil || !strings.Contains(err.Error(), bad.want.Error()) {
			t.Errorf("report to %s/%s: %v", bad.id, bad.check, err)
		}
	}
}

// Set keeps a check that did not change running with its status, and
// Carry hands that status to a registration made again; a changed check
// starts over from its initial status. Close stops every goroutine.
func TestSetKeepsUnchangedChecks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	r, _ := newRunner(t)
	def := api.Check{Type: api.CheckHTTP, Interval: fast}
	r.Set(instanceAt(t, srv.Listener.Addr().String(), def))
	waitFor(t, 5*time.Second, "passing", func() bool { return status(r, "web", "web-1") == api.HealthPassing })
	again := instanceAt(t, srv.Listener.Addr().String(), def)
	r.Carry(&again)
	if again.Checks[0].Status != api.HealthPassing || again.Health != api.HealthCritical {
		t.Fatalf("carried %+v (health %s before Normalize)", again.Checks[0], again.Health)
	}
	r.Set(again)
	if s := status(r, "web", "web-1"); s != api.HealthPassing {
		t.Fatalf("unchanged check reset to %s", s)
	}
	changed := instanceAt(t, srv.Listener.Addr().String(), api.Check{Type: api.CheckHTTP, Path: "/other", Interval: fast})
	r.Set(changed)
	if s := status(r, "web", "web-1"); s != api.HealthCritical {
		t.Fatalf("changed check kept %s", s)
	}
	if r.Count() != 1 {
		t.Fatalf("%d checks", r.Count())
	}
	r.Remove("web", "web-1")
	if r.Count() != 0 {
		t.Fatal("removed instance still checked")
	}
	r.Set(changed)
	r.Close()
	buf := make([]byte, 1<<20)
	if st := string(buf[:runtime.Stack(buf, true)]); strings.Contains(st, "health.(*Runner).run") {
		t.Fatalf("a check goroutine outlived Close:\n%s", st)
	}
}
