package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// do sends a request with a JSON body as the cluster's operator and
// returns the status and the error body.
func do(t *testing.T, method, url, body string) (int, api.Error) {
	t.Helper()
	code, e, _ := send(t, httpClient.Transport, method, url, "", body)
	return code, e
}

// send sends a request through tr, with token (none when "") and a JSON
// body (none when ""), and returns the status, the error body and the raw
// body. Writes may take the registry's full request timeout (5s) to fail.
func send(t *testing.T, tr http.RoundTripper, method, url, token, body string) (int, api.Error, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 15 * time.Second, Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e, b
}

// The agent API refuses bad registrations with a 4xx naming the field and
// changes nothing; good ones are routed through every gateway.
func TestRegistrationAPI(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	base := n1.api() + "/v1/services/"

	for _, tc := range []struct {
		path, body string
		code       int
		field      string
	}{
		{"Bad_Name/instances/x", `{"address":"127.0.0.1","port":1}`, 400, "service"},
		{"web/instances/-x", `{"address":"127.0.0.1","port":1}`, 400, "id"},
		{"web/instances/x", `{"address":"nope","port":1}`, 400, "address"},
		{"web/instances/x", `{"address":"127.0.0.1","port":0}`, 400, "port"},
		{"web/instances/x", `{"address":"127.0.0.1","port":"80"}`, 400, "port"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"colour":"red"}`, 400, "colour"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"no-slash"}`, 400, "path"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"weight":-1}`, 400, "weight"},
		{"web/instances/x", `{"address":`, 400, ""},
		{"web/instances/x", ``, 400, ""},
		{"web/instances/x", `{"address":"127.0.0.1","port":80} {}`, 400, ""},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"meta":{"k":"` + strings.Repeat("v", 1<<20) + `"}}`, 413, ""},
		// One small instance and then 2 MB of white space: the whole body
		// counts against the 1 MiB limit.
		{"web/instances/x", `{"address":"127.0.0.1","port":80}` + strings.Repeat(" ", 2<<20), 413, ""},
		{"web/instances/x", `{"address":"255.255.255.255","port":80}`, 400, "address"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"/a/../admin"}`, 400, "path"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"/a/./b"}`, 400, "path"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"/a//b"}`, 400, "path"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"/a/..;/b"}`, 400, "path"},
		{"web/instances/x", `{"address":"127.0.0.1","port":80,"path":"/a\\b"}`, 400, "path"},
		{"web/instances/x", `[{"address":"127.0.0.1","port":80}]`, 400, ""},
	} {
		code, e := do(t, http.MethodPut, base+tc.path, tc.body)
		if code != tc.code || e.Field != tc.field || e.Error == "" {
			t.Errorf("PUT %s %.60q: %d %+v, want %d naming %q", tc.path, tc.body, code, e, tc.code, tc.field)
		}
		if strings.Contains(e.Error, "api.") || strings.Contains(e.Error, "RegisterRequest") {
			t.Errorf("PUT %s %.60q: the error names a Go type: %q", tc.path, tc.body, e.Error)
		}
	}
	if code, e := do(t, http.MethodPut, base+"web/instances/x", `[1]`); !strings.Contains(e.Error, "JSON object") {
		t.Errorf("an array body: %d %q, want it to ask for a JSON object", code, e.Error)
	}
	if code, _ := getJSON(n1.api()+"/v1/services/web", nil); code != 404 {
		t.Fatalf("a refused registration left something behind: GET web = %d", code)
	}
	// The node's built-in instances are its own: the API can neither point
	// them elsewhere nor remove them.
	var echoBefore api.InstanceResponse
	if code, err := getJSON(n1.api()+"/v1/services/echo/instances/node1?consistent", &echoBefore); code != 200 || err != nil {
		t.Fatalf("the built-in echo: %d %v", code, err)
	}
	if code, e := do(t, http.MethodPut, base+"echo/instances/node1", `{"address":"127.0.0.1","port":1}`); code != 403 || e.Reason != "builtin_instance" {
		t.Errorf("replacing the built-in echo: %d %+v, want 403 builtin_instance", code, e)
	}
	if code, e := do(t, http.MethodDelete, base+"echo/instances/node1", ""); code != 403 || e.Reason != "builtin_instance" {
		t.Errorf("deleting the built-in echo: %d %+v, want 403 builtin_instance", code, e)
	}
	var echoAfter api.InstanceResponse
	if code, err := getJSON(n1.api()+"/v1/services/echo/instances/node1?consistent", &echoAfter); code != 200 || err != nil ||
		echoAfter.Instance.Port != echoBefore.Instance.Port || echoAfter.Instance.Address != echoBefore.Instance.Address {
		t.Fatalf("the built-in echo changed: %d %v %+v, was %+v", code, err, echoAfter, echoBefore)
	}
	// "path": "/" is the root, as no path is.
	if code, e := do(t, http.MethodPut, base+"root/instances/r1", fmt.Sprintf(`{"address":%q,"port":9000,"path":"/"}`, n1.IP)); code != 200 {
		t.Fatalf(`register with "path":"/": %d %+v`, code, e)
	}
	var root api.InstanceResponse
	if code, err := getJSON(n1.api()+"/v1/services/root/instances/r1?consistent", &root); code != 200 || err != nil || root.Instance.Path != "" {
		t.Fatalf(`the instance registered with "path":"/": %d %v %+v`, code, err, root.Instance)
	}

	body := fmt.Sprintf(`{"address":%q,"port":9000,"path":"/echo","tags":["t"],"meta":{"k":"v"},"weight":5}`, n1.IP)
	if code, e := do(t, http.MethodPut, base+"web/instances/web-1", body); code != 200 {
		t.Fatalf("register: %d %+v", code, e)
	}
	var svc api.ServiceResponse
	waitUntil(t, 5*time.Second, "web in the catalog", func() error {
		code, err := getJSON(n1.api()+"/v1/services/web", &svc)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	in := svc.Instances[0]
	if in.Node != "node1" || in.Weight != 5 || in.Meta["k"] != "v" || in.Path != "/echo" {
		t.Fatalf("instance %+v", in)
	}
	// A consistent read answers from the registry itself, for the service
	// and for one instance; a bad ?consistent value is named.
	var one api.InstanceResponse
	if code, err := getJSON(n1.api()+"/v1/services/web/instances/web-1?consistent", &one); code != 200 || err != nil || one.Instance.Weight != 5 || one.Revision == 0 {
		t.Fatalf("consistent instance read: %d %v %+v", code, err, one)
	}
	if code, err := getJSON(n1.api()+"/v1/services/web?consistent=true", &svc); code != 200 || err != nil || len(svc.Instances) != 1 {
		t.Fatalf("consistent service read: %d %v %+v", code, err, svc)
	}
	if code, _ := getJSON(n1.api()+"/v1/services/web/instances/web-2?consistent", nil); code != 404 {
		t.Fatalf("consistent read of a missing instance: %d, want 404", code)
	}
	if code, e := do(t, http.MethodGet, n1.api()+"/v1/services/web?consistent=maybe", ""); code != 400 || e.Field != "consistent" {
		t.Fatalf("?consistent=maybe: %d %+v, want 400 naming consistent", code, e)
	}
	resp, err := httpClient.Post(n1.gateway()+"/web/x?y=1", "text/plain", bytes.NewBufferString("hi"))
	if err != nil {
		t.Fatal(err)
	}
	var echo struct{ Path, Body string }
	_ = json.NewDecoder(resp.Body).Decode(&echo)
	resp.Body.Close()
	if resp.StatusCode != 200 || echo.Path != "/echo/x" || echo.Body != "hi" {
		t.Fatalf("through the gateway: %d %+v", resp.StatusCode, echo)
	}
	if code, _ := do(t, http.MethodDelete, base+"web/instances/web-1", ""); code != 200 {
		t.Fatalf("deregister: %d", code)
	}
	if code, _ := do(t, http.MethodDelete, base+"web/instances/web-1", ""); code != 404 {
		t.Fatalf("second deregister: %d", code)
	}
	waitUntil(t, 5*time.Second, "web gone from the gateway", func() error {
		resp, err := httpClient.Get(n1.gateway() + "/web/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			return fmt.Errorf("GET /web/ = %d", resp.StatusCode)
		}
		return nil
	})
}

// With two of three nodes paused the survivor answers a registration with
// 503 quickly, reports degraded, and keeps routing from its last catalog;
// when they come back the acknowledged registrations are all there.
func TestNoQuorum(t *testing.T) {
	_, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	body := fmt.Sprintf(`{"address":%q,"port":9000,"path":"/hello"}`, n1.IP)
	if code, e := do(t, http.MethodPut, n1.api()+"/v1/services/kept/instances/k1", body); code != 200 {
		t.Fatalf("register before the fault: %d %+v", code, e)
	}

	n2.signal(syscall.SIGSTOP)
	n3.signal(syscall.SIGSTOP)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			n2.signal(syscall.SIGCONT)
			n3.signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	start := time.Now()
	code, e := do(t, http.MethodPut, n1.api()+"/v1/services/lost/instances/l1", body)
	took := time.Since(start)
	if code != http.StatusServiceUnavailable || (e.Reason != "registry_unavailable" && e.Reason != "no_lease") {
		t.Fatalf("register without quorum: %d %+v, want 503", code, e)
	}
	if took > 10*time.Second {
		t.Fatalf("register without quorum took %s", took)
	}
	t.Logf("registration without quorum refused with 503 after %s", took.Round(time.Millisecond))
	// A consistent read cannot be served without quorum; the catalog still
	// answers from memory.
	if code, e := do(t, http.MethodGet, n1.api()+"/v1/services/kept?consistent", ""); code != http.StatusServiceUnavailable || e.Reason != "registry_unavailable" {
		t.Fatalf("consistent read without quorum: %d %+v, want 503", code, e)
	}
	if code, _ := getJSON(n1.api()+"/v1/services/kept", nil); code != 200 {
		t.Fatalf("catalog read without quorum: %d, want 200", code)
	}
	waitUntil(t, 20*time.Second, "node1 degraded", func() error {
		var rd api.Readiness
		code, err := getJSON(n1.api()+"/readyz", &rd)
		if err != nil {
			return err
		}
		if code != 503 || rd.Status != "degraded" || rd.Reason == "" {
			return fmt.Errorf("readyz %d %+v", code, rd)
		}
		return nil
	})
	// The data plane keeps routing from the last snapshot to node1's own
	// instance (the paused nodes' instances fail, which later work handles).
	for range 5 {
		resp, err := httpClient.Get(n1.gateway() + "/kept/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("routing without quorum: %d", resp.StatusCode)
		}
	}

	resume()
	for _, n := range nodes {
		waitUntil(t, 60*time.Second, n.Name+" ready after the pause", n.ready)
	}
	waitUntil(t, 30*time.Second, "the acknowledged registration on every node", func() error {
		for _, n := range nodes {
			var svc api.ServiceResponse
			if code, err := getJSON(n.api()+"/v1/services/kept", &svc); err != nil || code != 200 || len(svc.Instances) != 1 {
				return fmt.Errorf("%s: %d %v %+v", n.Name, code, err, svc)
			}
		}
		return nil
	})
}
