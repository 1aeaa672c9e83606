package clustertest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// call sends a request with token (none when "") through anonClient and
// returns the status, the error body and the raw body.
func call(t *testing.T, method, url, token, body string) (int, api.Error, []byte) {
	t.Helper()
	return send(t, tlsTransport, method, url, token, body)
}

// createToken makes a token with the management token and returns its
// secret.
func createToken(t *testing.T, n *node, mgmt, name, ttl string, policies ...string) string {
	t.Helper()
	body, _ := json.Marshal(api.ACLTokenRequest{Name: name, Policies: policies, TTL: ttl})
	req, err := http.NewRequest(http.MethodPost, n.api()+"/v1/acl/tokens", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+mgmt)
	resp, err := anonClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var tok api.ACLToken
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &tok) != nil || !strings.HasPrefix(tok.Secret, "herd-acl1.") {
		t.Fatalf("create token %s: %d %s", name, resp.StatusCode, b)
	}
	if cc, ns := resp.Header.Get("Cache-Control"), resp.Header.Get("X-Content-Type-Options"); cc != "no-store" || ns != "nosniff" {
		t.Errorf("the answer carrying a new secret has Cache-Control %q and X-Content-Type-Options %q, want no-store and nosniff", cc, ns)
	}
	// The node that made it takes it as soon as it answered.
	if code, e, _ := call(t, http.MethodGet, n.api()+"/v1/acl/whoami", tok.Secret, ""); code != 200 {
		t.Fatalf("token %s on %s right after it was made there: %d %+v", name, n.Name, code, e)
	}
	return tok.Secret
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "herd-acl1." + hex.EncodeToString(b)
}

// registryState is what a refused request must not change, read
// linearizably: the instances of hello and web, the tokens, the members.
func registryState(t *testing.T, n *node, mgmt string) string {
	t.Helper()
	var out []string
	for _, s := range []string{"hello", "web", "echo"} {
		var sr api.ServiceResponse
		code, _, b := call(t, http.MethodGet, n.api()+"/v1/services/"+s+"?consistent", mgmt, "")
		if code != 200 && code != 404 {
			t.Fatalf("consistent read of %s: %d %s", s, code, b)
		}
		_ = json.Unmarshal(b, &sr)
		for _, in := range sr.Instances {
			out = append(out, fmt.Sprintf("%s/%s@%s:%s:%d", in.Service, in.ID, in.Node, in.Address, in.Port))
		}
	}
	var tl api.ACLTokensResponse
	if code, _, b := call(t, http.MethodGet, n.api()+"/v1/acl/tokens", mgmt, ""); code != 200 || json.Unmarshal(b, &tl) != nil {
		t.Fatalf("token list: %d %s", code, b)
	}
	for _, tok := range tl.Tokens {
		out = append(out, "token "+tok.Name+" "+strings.Join(tok.Policies, ","))
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// Access control with real nodes: every endpoint refuses a request with no
// token, a wrong, malformed, expired or revoked one (revoked on another
// node, refused within a second), and a token whose policy does not cover
// it (403 naming the policy); nothing a refused request asked for happens.
// A service:web token cannot take hello's traffic. Audit lines name tokens
// and never hold a secret.
func TestACL(t *testing.T) {
	c, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	mgmt := c.managementToken()
	if !strings.HasPrefix(mgmt, "herd-acl1.") {
		t.Fatalf("node1 wrote no management token: %q", mgmt)
	}
	if st, err := os.Stat(filepath.Join(n1.DataDir, "acl-token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("acl-token: %v %v, want mode 0600", st.Mode(), err)
	}
	for _, n := range []*node{n2, n3} {
		if _, err := os.Stat(filepath.Join(n.DataDir, "acl-token")); err == nil {
			t.Errorf("%s, which joined, holds a management token", n.Name)
		}
	}
	if !strings.Contains(n1.logs(), "export HERD_TOKEN="+mgmt) {
		t.Errorf("node1 did not print the management token once: %s", tail(n1.logs(), 20))
	}

	reader := createToken(t, n1, mgmt, "reader", "", "read")
	web := createToken(t, n2, mgmt, "web-deployer", "", "service:web")
	op := createToken(t, n3, mgmt, "ops", "", "operator")
	// 3s: long enough for the check right after its creation on a loaded
	// machine, short enough to wait for.
	expired := createToken(t, n1, mgmt, "short", "3s", "operator")
	revoked := createToken(t, n1, mgmt, "gone", "", "operator")
	// Every node knows every token at once: the watch carried them.
	for _, n := range nodes {
		for _, tok := range []string{reader, web, op, revoked} {
			waitUntil(t, 2*time.Second, n.Name+" knows the new tokens", func() error {
				if code, e, _ := call(t, http.MethodGet, n.api()+"/v1/acl/whoami", tok, ""); code != 200 {
					return fmt.Errorf("%d %+v", code, e)
				}
				return nil
			})
		}
	}

	// Revoked on node1: refused there once the revoke answered, and by
	// node3 within a second of it.
	if code, e, _ := call(t, http.MethodDelete, n1.api()+"/v1/acl/tokens/gone", mgmt, ""); code != 200 {
		t.Fatalf("revoke: %d %+v", code, e)
	}
	revokedAt := time.Now()
	if code, e, _ := call(t, http.MethodGet, n1.api()+"/v1/members", revoked, ""); code != 401 {
		t.Fatalf("the revoked token on node1, right after the revoke answered: %d %+v", code, e)
	}
	waitUntil(t, time.Second, "node3 refusing the revoked token", func() error {
		if code, e, _ := call(t, http.MethodGet, n3.api()+"/v1/members", revoked, ""); code != 401 || e.Reason != "unknown_token" {
			return fmt.Errorf("%d %+v", code, e)
		}
		return nil
	})
	t.Logf("a token revoked on node1 was refused by node3 %s later", time.Since(revokedAt).Round(time.Millisecond))
	waitUntil(t, 10*time.Second, "the 3s token expiring", func() error {
		if code, e, _ := call(t, http.MethodGet, n2.api()+"/v1/members", expired, ""); code != 401 || e.Reason != "token_expired" {
			return fmt.Errorf("%d %+v", code, e)
		}
		return nil
	})

	before := registryState(t, n1, mgmt)
	helloIDs := []string{}
	var hello api.ServiceResponse
	if code, _ := getJSON(n1.api()+"/v1/services/hello?consistent", &hello); code != 200 || len(hello.Instances) != 3 {
		t.Fatalf("hello: %d %+v", code, hello)
	}
	for _, in := range hello.Instances {
		helloIDs = append(helloIDs, in.ID)
	}

	reg := `{"address":"127.0.0.1","port":9}`
	type endpoint struct {
		method, path, body string
		need               string // read, service:<name>, operator
	}
	endpoints := []endpoint{
		{"GET", "/v1/members", "", "read"},
		{"GET", "/v1/services", "", "read"},
		{"GET", "/v1/services/hello", "", "read"},
		{"GET", "/v1/services/hello/instances/" + helloIDs[0], "", "read"},
		{"GET", "/metrics", "", "read"},
		{"PUT", "/v1/services/hello/instances/evil", reg, "service:hello"},
		{"PUT", "/v1/services/web/instances/web-x", reg, "service:web"},
		{"DELETE", "/v1/services/web/instances/web-x", "", "service:web"},
		{"POST", "/v1/leave", "", "operator"},
		{"POST", "/v1/force-leave/node3", "", "operator"},
		{"GET", "/v1/snapshot", "", "operator"},
		{"POST", "/v1/token/rotate", "", "operator"},
		{"GET", "/v1/keyring", "", "operator"},
		{"POST", "/v1/keyring", `{"op":"remove","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, "operator"},
		{"GET", "/v1/acl/tokens", "", "operator"},
		{"POST", "/v1/acl/tokens", `{"name":"escalated","policies":["operator"]}`, "operator"},
		{"DELETE", "/v1/acl/tokens/ops", "", "operator"},
		{"POST", "/v1/acl/bootstrap", `{"reset":true}`, "operator"},
	}
	refusals := map[string]struct {
		token, reason string
	}{
		"none":      {"", "token_required"},
		"wrong":     {randomSecret(), "unknown_token"},
		"malformed": {"hunter2", "invalid_token"},
		"join":      {strings.TrimSpace(mustRead(t, filepath.Join(n1.DataDir, "join-token"))), "invalid_token"},
		"expired":   {expired, "token_expired"},
		"revoked":   {revoked, "unknown_token"},
	}
	for _, ep := range endpoints {
		for i, n := range nodes {
			for what, r := range refusals {
				code, e, b := call(t, ep.method, n.api()+ep.path, r.token, ep.body)
				if code != 401 || e.Reason != r.reason || e.Error == "" {
					t.Errorf("%s %s on %s with %s token: %d %s, want 401 %s", ep.method, ep.path, n.Name, what, code, b, r.reason)
				}
			}
			// Scoped tokens: a 403 naming the policy that would do.
			for name, tok := range map[string]string{"reader": reader, "web-deployer": web} {
				allowed := ep.need == "read" || name == "web-deployer" && ep.need == "service:web"
				if allowed {
					continue // run below, once
				}
				code, e, b := call(t, ep.method, n.api()+ep.path, tok, ep.body)
				if code != 403 || e.Reason != "permission_denied" || e.Policy != ep.need || !strings.Contains(e.Error, name) {
					t.Errorf("%s %s on %s with %s: %d %s, want 403 naming %s", ep.method, ep.path, n.Name, name, code, b, ep.need)
				}
			}
			if i > 0 {
				continue
			}
			// Allowed: past the access control (reads answer, the rest
			// get whatever the endpoint says: none of them is a 401/403).
			if ep.need == "read" {
				for _, tok := range []string{reader, web, op} {
					if code, _, b := call(t, ep.method, n.api()+ep.path, tok, ep.body); code != 200 {
						t.Errorf("%s %s with a read-capable token: %d %.200s", ep.method, ep.path, code, b)
					}
				}
			}
		}
	}
	for i := 0; i < 5; i++ {
		// Nothing a refused request asked for happened, on any node.
		if after := registryState(t, nodes[i%3], mgmt); after != before {
			t.Fatalf("refused requests changed the registry:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	}

	// The hijack: a service:web token against hello, through every node.
	for _, n := range nodes {
		for _, id := range append([]string{"evil"}, helloIDs...) {
			if code, e, _ := call(t, http.MethodPut, n.api()+"/v1/services/hello/instances/"+id, web, reg); code != 403 || e.Policy != "service:hello" {
				t.Errorf("PUT hello/%s with service:web via %s: %d %+v", id, n.Name, code, e)
			}
			if code, e, _ := call(t, http.MethodDelete, n.api()+"/v1/services/hello/instances/"+id, web, ""); code != 403 || e.Policy != "service:hello" {
				t.Errorf("DELETE hello/%s with service:web via %s: %d %+v", id, n.Name, code, e)
			}
		}
	}
	if after := registryState(t, n3, mgmt); after != before {
		t.Fatalf("the hijack changed the registry:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := allGatewaysRouteToAll(nodes); err != nil {
		_, _, b1 := call(t, "GET", n1.api()+"/v1/services/hello", mgmt, "")
		_, _, b2 := call(t, "GET", n1.api()+"/metrics", mgmt, "")
		var lines []string
		for _, l := range strings.Split(string(b2), "\n") {
			if strings.HasPrefix(l, "herd_gateway") && !strings.Contains(l, "bucket") {
				lines = append(lines, l)
			}
		}
		t.Fatalf("after the hijack: %v\n%s\n%s", err, b1, strings.Join(lines, "\n"))
	}

	// What the service token may do, it does: web-* through another node.
	if code, e, _ := call(t, http.MethodPut, n2.api()+"/v1/services/web-api/instances/w1", web, reg); code != 200 {
		t.Fatalf("register web-api/w1 with service:web: %d %+v", code, e)
	}
	if code, e, _ := call(t, http.MethodDelete, n2.api()+"/v1/services/web-api/instances/w1", web, ""); code != 200 {
		t.Fatalf("deregister web-api/w1 with service:web: %d %+v", code, e)
	}
	// Built-in instances stay the node's, even for an operator.
	if code, e, _ := call(t, http.MethodDelete, n2.api()+"/v1/services/hello/instances/"+builtinID(t, hello, n2.Name), op, ""); code != 403 || e.Reason != "builtin_instance" {
		t.Errorf("operator DELETE of node2's built-in hello: %d %+v", code, e)
	}
	// An operator token escalates nothing it does not have: it is operator.
	// A token cannot be made with an unknown policy or a taken name.
	for body, field := range map[string]string{
		`{"name":"x","policies":["admin"]}`:             "policies",
		`{"name":"x","policies":[]}`:                    "policies",
		`{"name":"Bad Name","policies":["read"]}`:       "name",
		`{"name":"reader","policies":["read"]}`:         "name",
		`{"name":"bootstrap","policies":["read"]}`:      "name",
		`{"name":"x","policies":["read"],"ttl":"0s"}`:   "ttl",
		`{"name":"x","policies":["read"],"ttl":"soon"}`: "ttl",
		`{"name":"x","policies":["read"],"role":"x"}`:   "role",
	} {
		if code, e, _ := call(t, http.MethodPost, n3.api()+"/v1/acl/tokens", op, body); code/100 != 4 || e.Field != field {
			t.Errorf("POST /v1/acl/tokens %s: %d %+v, want a 4xx naming %s", body, code, e, field)
		}
	}

	// Metrics count the refusals; the audit log names tokens, never secrets.
	code, _, b := call(t, http.MethodGet, n1.api()+"/metrics", reader, "")
	if code != 200 || !bytes.Contains(b, []byte(`herd_acl_denied_total{reason="permission_denied"}`)) ||
		!bytes.Contains(b, []byte(`herd_acl_changes_total{action="acl_token_create"}`)) {
		t.Fatalf("/metrics: %d, no ACL counters", code)
	}
	logs := n1.logs() + n2.logs() + n3.logs()
	for _, want := range []string{`msg="agent API request refused"`, "token=web-deployer", `action=register target=web-api/w1 token=web-deployer`,
		`action=acl_token_revoke target=gone token=bootstrap`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the logs lack %q", want)
		}
	}
	for _, secret := range []string{reader, web, op, expired, revoked} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a token's secret is in a node's log")
		}
	}
	if strings.Count(logs, mgmt) != 1 {
		t.Errorf("the management token appears %d times in the logs, want once (the banner)", strings.Count(logs, mgmt))
	}

	// The CLI: HERD_TOKEN, --token-file, and the certificate of a data dir.
	tokFile := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tokFile, []byte(reader+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "services", "--api", n2.api(), "--token-file", tokFile); err != nil || !strings.Contains(out, "hello") {
		t.Errorf("herd services --token-file (read): %v %s", err, out)
	}
	// A flag given wins over the environment's token.
	cmd := execHerd("leave", "--api", n2.api(), "--ca-file", c.caFile(), "--token-file", tokFile)
	cmd.Env = append(os.Environ(), "HERD_TOKEN="+op)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "403") {
		t.Fatalf("herd leave --token-file (read) with HERD_TOKEN (operator) set: %v %s", err, b)
	}
	if _, err := runCLI(t, "leave", "--api", n2.api(), "--token-file", tokFile); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("herd leave with a read token: %v", err)
	}
	out, err := runCLI(t, "acl", "token", "create", "--api", n1.api(), "--name", "cli", "--policy", "service:api", "--ttl", "1h", "-q")
	if err != nil || !strings.HasPrefix(out, "herd-acl1.") {
		t.Fatalf("herd acl token create: %v %s", err, out)
	}
	out, err = runCLI(t, "acl", "token", "list", "--api", n3.api(), "--data-dir", n3.DataDir)
	if err != nil {
		t.Fatalf("herd acl token list --data-dir: %v", err)
	}
	rows := table(out)
	names := []string{}
	for _, r := range rows {
		names = append(names, r["NAME"])
	}
	if !slices.Equal(names, []string{"bootstrap", "cli", "ops", "reader", "short", "web-deployer"}) || strings.Contains(out, "herd-acl1.") {
		t.Errorf("herd acl token list: %v\n%s", names, out)
	}
	if out, err := runCLI(t, "acl", "token", "revoke", "cli", "--api", n2.api()); err != nil || !strings.Contains(out, "revoked") {
		t.Errorf("herd acl token revoke: %v %s", err, out)
	}

	// Lost the management token: reset it from another node's data dir.
	if _, err := runCLI(t, "acl", "bootstrap", "--api", n2.api(), "--data-dir", n2.DataDir); err == nil || !strings.Contains(err.Error(), "bootstrapped already") {
		t.Errorf("herd acl bootstrap on a bootstrapped cluster: %v", err)
	}
	// As in the runbook, HERD_TOKEN may still hold a token that no longer
	// works: the data dir's certificate is what counts.
	cmd = execHerd("acl", "bootstrap", "--reset", "--api", n2.api(), "--data-dir", n2.DataDir)
	cmd.Env = append(os.Environ(), "HERD_TOKEN="+revoked)
	b, err = cmd.Output()
	out = string(b)
	newMgmt := strings.TrimPrefix(strings.TrimSpace(out), "export HERD_TOKEN=")
	if err != nil || !strings.HasPrefix(newMgmt, "herd-acl1.") || newMgmt == mgmt {
		t.Fatalf("herd acl bootstrap --reset: %v %s", err, out)
	}
	if st, err := os.Stat(filepath.Join(n2.DataDir, "acl-token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("node2's acl-token after the reset: %v %v", st, err)
	}
	if !strings.Contains(n2.logs(), "action=acl_bootstrap target=bootstrap token=cert:node2 caller=node-certificate cert_serial=") {
		t.Errorf("the reset's audit line does not name node2's certificate: %s", tail(n2.logs(), 5))
	}
	if got := strings.TrimSpace(mustRead(t, filepath.Join(n2.DataDir, "acl-token"))); got != newMgmt {
		t.Errorf("node2's acl-token holds %q, want the new token", got)
	}
	waitUntil(t, time.Second, "the old management token refused on node3", func() error {
		if code, e, _ := call(t, http.MethodGet, n3.api()+"/v1/acl/tokens", mgmt, ""); code != 401 {
			return fmt.Errorf("%d %+v", code, e)
		}
		return nil
	})
	if code, e, _ := call(t, http.MethodGet, n1.api()+"/v1/acl/tokens", newMgmt, ""); code != 200 {
		t.Fatalf("the new management token: %d %+v", code, e)
	}
	// Other tokens survive a reset.
	if code, _, _ := call(t, http.MethodGet, n1.api()+"/v1/members", reader, ""); code != 200 {
		t.Fatalf("the read token after a reset: %d", code)
	}
}

func builtinID(t *testing.T, hello api.ServiceResponse, node string) string {
	t.Helper()
	for _, in := range hello.Instances {
		if in.Node == node {
			return in.ID
		}
	}
	t.Fatalf("no hello instance of %s in %+v", node, hello)
	return ""
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// --metrics-anonymous opens /metrics alone; --anonymous-read opens every
// read (/metrics among them) and never a write, and a bad token is refused
// even so.
func TestACLAnonymousRead(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1, "--metrics-anonymous")
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	if code, _, b := call(t, http.MethodGet, n1.api()+"/metrics", "", ""); code != 200 || !bytes.Contains(b, []byte("herd_acl_denied_total")) {
		t.Fatalf("anonymous /metrics with --metrics-anonymous: %d", code)
	}
	if code, e, _ := call(t, http.MethodGet, n1.api()+"/v1/services", "", ""); code != 401 || e.Reason != "token_required" {
		t.Fatalf("anonymous read with --metrics-anonymous only: %d %+v", code, e)
	}
	n1.signal(syscall.SIGTERM)
	n1.wait(30 * time.Second)
	n1.Args = []string{"--anonymous-read"}
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready again", n1.ready)
	for _, path := range []string{"/v1/services", "/v1/members", "/v1/services/hello", "/metrics"} {
		if code, e, _ := call(t, http.MethodGet, n1.api()+path, "", ""); code == 401 || code == 403 {
			t.Errorf("anonymous GET %s with --anonymous-read: %d %+v", path, code, e)
		}
	}
	for _, path := range []string{"/v1/acl/tokens", "/v1/snapshot", "/v1/keyring"} {
		if code, e, _ := call(t, http.MethodGet, n1.api()+path, "", ""); code != 401 {
			t.Errorf("anonymous GET %s (operator) with --anonymous-read: %d %+v", path, code, e)
		}
	}
	if code, e, _ := call(t, http.MethodPut, n1.api()+"/v1/services/web/instances/x", "", `{"address":"127.0.0.1","port":9}`); code != 401 || e.Reason != "token_required" {
		t.Fatalf("anonymous write with --anonymous-read: %d %+v", code, e)
	}
	if code, e, _ := call(t, http.MethodGet, n1.api()+"/v1/services", randomSecret(), ""); code != 401 {
		t.Fatalf("a wrong token with --anonymous-read: %d %+v (a bad token is refused, not taken for anonymous)", code, e)
	}
}
