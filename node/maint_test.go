package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

func maintOf(t *testing.T, hc *http.Client, base string) api.Maintenance {
	t.Helper()
	c, b, err := getWith(hc, base+"/v1/maintenance")
	var m api.Maintenance
	if err != nil || c != 200 || json.Unmarshal([]byte(b), &m) != nil {
		t.Fatalf("GET /v1/maintenance: %d %s %v", c, b, err)
	}
	return m
}

func maintIs(hc *http.Client, base, service, id, want string) func() error {
	return func() error {
		in, err := instanceOf(hc, base, service, id)
		if err != nil {
			return err
		}
		if in.Maintenance != want {
			return fmt.Errorf("maintenance %q, want %q", in.Maintenance, want)
		}
		return nil
	}
}

// Maintenance takes a service's instances, or the whole node's, out of
// the gateway at once, survives a restart of the node, and comes off again.
func TestMaintenance(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "web answered") }))
	defer backend.Close()
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())

	cfg := testConfig(t)
	n := startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	gw := fmt.Sprintf("http://127.0.0.1:%d", cfg.GatewayPort)
	hc := caClient(t, cfg.DataDir)
	waitReady(t, hc, base)
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/web/instances/web-1", fmt.Sprintf(`{"address":"127.0.0.1","port":%s}`, port)); c != 200 {
		t.Fatalf("register: %d %s", c, b)
	}
	routes := func(path string, want int) func() error {
		return func() error {
			if c, b, err := get(gw + path); err != nil || c != want {
				return fmt.Errorf("%s: %d %s %v, want %d", path, c, b, err, want)
			}
			return nil
		}
	}
	waitFor(t, 10*time.Second, "the gateway routing to web", routes("/web/", 200))

	// Bad requests change nothing.
	for _, bad := range []struct {
		query, body string
		code        int
		want        string
	}{
		{"?service=Web_1", "", 400, "service"},
		{"?service=", "", 400, "service"},
		{"?service=nosuch", "", 404, "no instance of service"},
		{"", `{"reason":"line\nbreak"}`, 400, "reason"},
		{"", `{"reason":"` + strings.Repeat("x", 300) + `"}`, 400, "reason"},
		{"", `{"why":"x"}`, 400, "why"},
	} {
		c, b := call(t, hc, http.MethodPut, base+"/v1/maintenance"+bad.query, bad.body)
		if c != bad.code || !strings.Contains(b, bad.want) {
			t.Errorf("PUT /v1/maintenance%s %s: %d %s, want %d naming %s", bad.query, bad.body, c, b, bad.code, bad.want)
		}
	}
	if m := maintOf(t, hc, base); m.Node != nil || len(m.Services) != 0 {
		t.Fatalf("bad requests changed the state: %+v", m)
	}

	// One service: its instances at once, nothing else.
	if c, b := call(t, hc, http.MethodPut, base+"/v1/maintenance?service=web", `{"reason":"deploying web 2.1"}`); c != 200 || !strings.Contains(b, "deploying web 2.1") {
		t.Fatalf("enable web: %d %s", c, b)
	}
	waitFor(t, 5*time.Second, "the gateway refusing web", routes("/web/", http.StatusServiceUnavailable))
	if _, b, _ := get(gw + "/web/"); !strings.Contains(b, "1 in maintenance") {
		t.Errorf("503 says: %s", b)
	}
	waitFor(t, 5*time.Second, "web-1 in maintenance", maintIs(hc, base, "web", "web-1", "deploying web 2.1"))
	waitFor(t, 5*time.Second, "hello still routed", routes("/hello/", 200))
	// ?passing leaves it out; the service is still known.
	if c, b, err := getWith(hc, base+"/v1/services/web?passing"); err != nil || c != 200 || strings.Contains(b, "web-1") {
		t.Fatalf("?passing with web-1 in maintenance: %d %s %v", c, b, err)
	}
	if c, b, err := getWith(hc, base+"/v1/services/web?passing=maybe"); err != nil || c != 400 || !strings.Contains(b, `"field": "passing"`) {
		t.Fatalf("?passing=maybe: %d %s %v", c, b, err)
	}
	if s := n.gossip.LocalMeta().Maint; s != "web" {
		t.Errorf("gossip summary %q, want web", s)
	}

	// The node: every instance, built-ins too; the node's reason wins.
	if c, b := call(t, hc, http.MethodPut, base+"/v1/maintenance", ""); c != 200 {
		t.Fatalf("enable node: %d %s", c, b)
	}
	waitFor(t, 5*time.Second, "the gateway refusing hello", routes("/hello/", http.StatusServiceUnavailable))
	waitFor(t, 5*time.Second, "web-1 under the node's reason", maintIs(hc, base, "web", "web-1", api.DefaultMaintReason))
	if st, err := os.Stat(filepath.Join(cfg.DataDir, maintFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the state file: %v %v", st, err)
	}

	// A restart keeps it: the kept web-1 and the built-ins come back in
	// maintenance.
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	waitReady(t, hc, base)
	if m := maintOf(t, hc, base); m.Node == nil || m.Services["web"].Reason != "deploying web 2.1" || m.Node.By == "" {
		t.Fatalf("after the restart: %+v", m)
	}
	waitFor(t, 10*time.Second, "web-1 back, in maintenance", maintIs(hc, base, "web", "web-1", api.DefaultMaintReason))
	waitFor(t, 10*time.Second, "hello back, in maintenance", maintIs(hc, base, "hello", cfg.Name, api.DefaultMaintReason))
	if c, _, _ := get(gw + "/web/"); c != http.StatusServiceUnavailable {
		t.Fatalf("web routed after the restart: %d", c)
	}

	// Off again: the node first (web stays in its own), then web.
	if c, b := call(t, hc, http.MethodDelete, base+"/v1/maintenance", ""); c != 200 {
		t.Fatalf("disable node: %d %s", c, b)
	}
	waitFor(t, 5*time.Second, "hello routed again", routes("/hello/", 200))
	waitFor(t, 5*time.Second, "web-1 under its own reason", maintIs(hc, base, "web", "web-1", "deploying web 2.1"))
	if c, b := call(t, hc, http.MethodDelete, base+"/v1/maintenance?service=web", ""); c != 200 {
		t.Fatalf("disable web: %d %s", c, b)
	}
	waitFor(t, 5*time.Second, "web routed again", routes("/web/", 200))
	if c, b, err := getWith(hc, base+"/v1/services/web?passing"); err != nil || c != 200 || !strings.Contains(b, "web-1") {
		t.Fatalf("?passing with web-1 out of maintenance: %d %s %v", c, b, err)
	}
	if m := maintOf(t, hc, base); m.Node != nil || len(m.Services) != 0 {
		t.Fatalf("after disabling: %+v", m)
	}
	// Disabling what is off is no error.
	if c, b := call(t, hc, http.MethodDelete, base+"/v1/maintenance?service=web", ""); c != 200 {
		t.Fatalf("disable again: %d %s", c, b)
	}
	if s := n.gossip.LocalMeta().Maint; s != "" {
		t.Errorf("gossip summary %q after disabling", s)
	}
}
