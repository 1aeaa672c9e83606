package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// call makes a request with a JSON body (or none) and returns the status
// and body.
func call(t *testing.T, hc *http.Client, method, url, body string) (int, string) {
	t.Helper()
	var req *http.Request
	var err error
	if body == "" {
		req, err = http.NewRequest(method, url, nil)
	} else {
		req, err = http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// healthOf is the health in an answer that carries an instance.
func healthOf(body string) string {
	var in api.Instance
	_ = json.Unmarshal([]byte(body), &in)
	return in.Health
}

// instanceOf reads service/id from the node's catalog.
func instanceOf(hc *http.Client, base, service, id string) (api.Instance, error) {
	code, body, err := getWith(hc, base+"/v1/services/"+service+"/instances/"+id)
	if err != nil {
		return api.Instance{}, err
	}
	if code != http.StatusOK {
		return api.Instance{}, fmt.Errorf("%d %s", code, body)
	}
	var r api.InstanceResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return api.Instance{}, err
	}
	return r.Instance, nil
}

func healthIs(hc *http.Client, base, service, id, want string) func() error {
	return func() error {
		in, err := instanceOf(hc, base, service, id)
		if err != nil {
			return err
		}
		if in.Health != want {
			return fmt.Errorf("health %s, want %s (checks %+v)", in.Health, want, in.Checks)
		}
		return nil
	}
}

// A real node runs the checks of the instances registered through it and
// the registry and its gateway believe them: an instance with an http
// check is not routed to before it passes, goes critical after
// failures_before_critical failures and out of the gateway's rotation,
// comes back after success_before_passing; registering it again keeps its
// status; a ttl check follows its service's reports; an instance critical
// for deregister_critical_after is deregistered; bad checks are 400s.
func TestChecksDriveRegistryAndGateway(t *testing.T) {
	var code, served atomic.Int64
	code.Store(200)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(int(code.Load()))
			return
		}
		served.Add(1)
		fmt.Fprint(w, "web answered")
	}))
	defer backend.Close()
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())

	cfg := testConfig(t)
	startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	gw := fmt.Sprintf("http://127.0.0.1:%d", cfg.GatewayPort)
	hc := caClient(t, cfg.DataDir)
	waitReady(t, hc, base)

	reg := fmt.Sprintf(`{"address":"127.0.0.1","port":%s,"checks":[{"type":"http","path":"/healthz","interval":"200ms","failures_before_critical":2,"success_before_passing":2}]}`, port)
	// Hold the first run back: the check fails until the backend says 200.
	code.Store(503)
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/web/instances/web-1", reg); c != 200 || healthOf(b) != api.HealthCritical {
		t.Fatalf("register: %d %s", c, b)
	}
	waitFor(t, 10*time.Second, "the gateway to know web-1 and refuse it", func() error {
		if c, b, err := get(gw + "/web/"); err != nil || c != http.StatusServiceUnavailable || !strings.Contains(b, "1 critical") {
			return fmt.Errorf("%d %s %v", c, b, err)
		}
		return nil
	})
	if n := served.Load(); n != 0 {
		t.Fatalf("an instance that has not passed yet was routed %d requests", n)
	}
	code.Store(200)
	waitFor(t, 10*time.Second, "web-1 passing", healthIs(hc, base, "web", "web-1", api.HealthPassing))
	waitFor(t, 10*time.Second, "the gateway routing to web-1", func() error {
		if c, b, err := get(gw + "/web/"); err != nil || c != 200 || b != "web answered" {
			return fmt.Errorf("%d %s %v", c, b, err)
		}
		return nil
	})
	// Registering it again with the same check keeps it passing.
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/web/instances/web-1", reg); c != 200 || healthOf(b) != api.HealthPassing {
		t.Fatalf("register again: %d %s", c, b)
	}

	code.Store(500)
	waitFor(t, 10*time.Second, "web-1 critical", healthIs(hc, base, "web", "web-1", api.HealthCritical))
	waitFor(t, 10*time.Second, "the gateway refusing web", func() error {
		if c, b, err := get(gw + "/web/"); err != nil || c != http.StatusServiceUnavailable {
			return fmt.Errorf("%d %s %v", c, b, err)
		}
		return nil
	})
	in, _ := instanceOf(hc, base, "web", "web-1")
	if len(in.Checks) != 1 || !strings.Contains(in.Checks[0].Output, "500 Internal Server Error") || in.Checks[0].Since.IsZero() {
		t.Fatalf("the registry's check: %+v", in.Checks)
	}
	c, b, _ := getWith(hc, base+"/v1/checks?service=web")
	var results []api.CheckResult
	if err := json.Unmarshal([]byte(b), &results); c != 200 || err != nil || len(results) != 1 || results[0].Failures < 2 || results[0].LastRun.IsZero() {
		t.Fatalf("GET /v1/checks: %d %s", c, b)
	}
	code.Store(200)
	waitFor(t, 10*time.Second, "web-1 passing again", healthIs(hc, base, "web", "web-1", api.HealthPassing))

	// A ttl check, reported by its service.
	ttl := `{"address":"127.0.0.1","port":9,"checks":[{"name":"alive","type":"ttl","ttl":"1s","deregister_critical_after":"2s"}]}`
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/batch/instances/job-1", ttl); c != 200 {
		t.Fatalf("register ttl: %d %s", c, b)
	}
	if c, b := call(t, hc, http.MethodPut, base+"/v1/checks/batch/job-1/alive/pass", `{"note":"42 jobs done"}`); c != http.StatusNoContent {
		t.Fatalf("report: %d %s", c, b)
	}
	waitFor(t, 10*time.Second, "job-1 passing", healthIs(hc, base, "batch", "job-1", api.HealthPassing))
	if in, _ := instanceOf(hc, base, "batch", "job-1"); in.Checks[0].Output != "42 jobs done" {
		t.Fatalf("note: %+v", in.Checks[0])
	}
	for _, bad := range []struct {
		path string
		code int
	}{
		{"/v1/checks/batch/job-1/alive/maybe", 400},
		{"/v1/checks/batch/job-9/alive/pass", 404},
		{"/v1/checks/batch/job-1/other/pass", 404},
		{"/v1/checks/web/web-1/http/pass", 409},
	} {
		if c, b := call(t, hc, http.MethodPut, base+bad.path, ""); c != bad.code {
			t.Errorf("PUT %s: %d %s, want %d", bad.path, c, b, bad.code)
		}
	}
	// Unreported, it goes critical after its TTL, and is deregistered two
	// seconds later.
	waitFor(t, 10*time.Second, "job-1 critical", healthIs(hc, base, "batch", "job-1", api.HealthCritical))
	waitFor(t, 10*time.Second, "job-1 deregistered", func() error {
		if _, err := instanceOf(hc, base, "batch", "job-1"); err == nil || !strings.HasPrefix(err.Error(), "404") {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})

	for _, bad := range []struct{ body, field string }{
		{`{"address":"127.0.0.1","port":9,"checks":[{"type":"icmp"}]}`, "checks[0].type"},
		{`{"address":"127.0.0.1","port":9,"checks":[{"type":"http","interval":"1ms"}]}`, "checks[0].interval"},
		{`{"address":"127.0.0.1","port":9,"checks":[{"type":"http","interval":"soon"}]}`, "checks"},
		{`{"address":"127.0.0.1","port":9,"checks":[{"type":"tcp"},{"type":"ttl"}]}`, "checks[1].ttl"},
	} {
		c, b := call(t, hc, http.MethodPut, base+"/v1/services/web/instances/bad-1", bad.body)
		if c != http.StatusBadRequest || !strings.Contains(b, bad.field) {
			t.Errorf("%s: %d %s, want a 400 naming %s", bad.body, c, b, bad.field)
		}
	}

	// The built-in services carry a real http check.
	hello, err := instanceOf(hc, base, "hello", cfg.Name)
	if err != nil || len(hello.Checks) != 1 || hello.Checks[0].Type != api.CheckHTTP || hello.Health != api.HealthPassing {
		t.Fatalf("built-in hello: %+v %v", hello, err)
	}
	waitFor(t, 10*time.Second, "hello's check run", func() error {
		_, b, err := getWith(hc, base+"/v1/checks?service=hello")
		if err != nil || !strings.Contains(strings.ReplaceAll(b, " ", ""), `"result":"passing"`) {
			return fmt.Errorf("%s %v", b, err)
		}
		return nil
	})
}
