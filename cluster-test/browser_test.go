package clustertest

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A web page cannot be used against the agent API: a cross-site form or
// no-cors fetch (text/plain body, foreign Origin, Sec-Fetch-Site
// cross-site) changes nothing, and a DNS-rebound name (a Host the API does
// not serve) gets nothing; the CLI, same-origin requests and allowed
// origins and hosts still work.
func TestAPIRefusesBrowserAttacks(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1, "--api-allowed-hosts", "herd.internal", "--api-allowed-origins", "https://ui.example")
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	send := func(method, path, host string, hdr map[string]string, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, n1.api()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	register := `{"address":"127.0.0.1","port":9000}`
	for _, tc := range []struct {
		name, method, path, host string
		hdr                      map[string]string
		body                     string
		want                     int
		reason                   string
	}{
		{"leave from a form post", "POST", "/v1/leave", "", map[string]string{"Content-Type": "text/plain"}, "x", 415, "unsupported_media_type"},
		{"leave with a foreign Origin", "POST", "/v1/leave", "", map[string]string{"Origin": "https://evil.example"}, "", 403, "origin_not_allowed"},
		{"register with a foreign Origin", "PUT", "/v1/services/evil/instances/e1", "", map[string]string{"Origin": "https://evil.example", "Content-Type": "application/json"}, register, 403, "origin_not_allowed"},
		{"register cross-site, no Origin", "PUT", "/v1/services/evil/instances/e1", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, register, 403, "origin_not_allowed"},
		{"register as a form", "PUT", "/v1/services/evil/instances/e1", "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, register, 415, "unsupported_media_type"},
		{"read with a foreign Origin", "GET", "/v1/members", "", map[string]string{"Origin": "https://evil.example"}, "", 403, "origin_not_allowed"},
		{"DNS rebinding: a foreign Host", "GET", "/v1/members", "evil.example:8500", nil, "", 421, "host_not_allowed"},
		{"DNS rebinding: register", "PUT", "/v1/services/evil/instances/e1", "evil.example", map[string]string{"Content-Type": "application/json"}, register, 421, "host_not_allowed"},
		{"metrics to a foreign Host", "GET", "/metrics", "evil.example", nil, "", 421, "host_not_allowed"},
	} {
		code, body := send(tc.method, tc.path, tc.host, tc.hdr, tc.body)
		if code != tc.want || !strings.Contains(body, tc.reason) {
			t.Errorf("%s: %d %s, want %d %s", tc.name, code, body, tc.want, tc.reason)
		}
	}
	if !n1.running() {
		t.Fatal("a refused leave stopped the node")
	}
	if code, _ := getJSON(n1.api()+"/v1/services/evil", nil); code != 404 {
		t.Fatalf("a refused registration left something behind: GET evil = %d", code)
	}

	for _, tc := range []struct {
		name, method, path, host string
		hdr                      map[string]string
		body                     string
	}{
		{"the node's address", "GET", "/v1/members", n1.IP + ":8500", nil, ""},
		{"its node name", "GET", "/v1/members", "node1:8500", nil, ""},
		{"an allowed host", "GET", "/v1/members", "herd.internal", nil, ""},
		{"health checks to any Host", "GET", "/readyz", "whatever.example", nil, ""},
		{"same origin", "PUT", "/v1/services/web/instances/w1", "", map[string]string{"Origin": "https://" + n1.IP + ":8500", "Content-Type": "application/json"}, register},
		{"an allowed origin", "PUT", "/v1/services/web/instances/w2", "", map[string]string{"Origin": "https://ui.example", "Content-Type": "application/json; charset=utf-8"}, register},
		{"no body, no content type", "DELETE", "/v1/services/web/instances/w2", "", nil, ""},
	} {
		if code, body := send(tc.method, tc.path, tc.host, tc.hdr, tc.body); code != 200 {
			t.Errorf("%s: %d %s, want 200", tc.name, code, body)
		}
	}
	if out, err := runCLI(t, "members", "--api", n1.api()); err != nil || !strings.Contains(out, "node1") {
		t.Fatalf("the CLI: %v %s", err, out)
	}
	// A bad flag value is named at start.
	bad := c.add(2, "--api-allowed-origins", "evil.example")
	bad.NoToken = true
	bad.start()
	if code := bad.wait(20 * time.Second); code == 0 || !strings.Contains(bad.logs(), "--api-allowed-origins") {
		t.Fatalf("a bad --api-allowed-origins: exit %d, log %s", code, tail(bad.logs(), 5))
	}

}
