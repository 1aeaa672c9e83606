package clustertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// What a stranger on the network can no longer do: join without the
// token, join with a wrong one or another cluster's, talk to the registry
// without a cluster certificate, read the agent API in plaintext, or be
// heard in gossip without the key.
func TestSecurityRefusesStrangers(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	tok, err := os.ReadFile(filepath.Join(n1.DataDir, "join-token"))
	if err != nil {
		t.Fatal(err)
	}
	good := strings.TrimSpace(string(tok))
	if st, _ := os.Stat(filepath.Join(n1.DataDir, "join-token")); st.Mode().Perm() != 0o600 {
		t.Fatalf("join-token is %v, want 0600", st.Mode().Perm())
	}
	parts := strings.Split(good, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	// The token never reaches a log line.
	if strings.Count(n1.logs(), parts[2]) > 1 {
		t.Fatal("the join secret is in node1's log beyond the one-time print")
	}

	other := generateToken(t) // herd1.<secret>: no pin
	otherSecret := strings.TrimPrefix(other, "herd1.")
	for _, tc := range []struct {
		name, token, joinerSays, node1Says string
	}{
		{"wrong secret", parts[0] + "." + parts[1] + "." + otherSecret,
			"join refused: the cluster refused the join token", "join refused: wrong join token"},
		{"another cluster's CA", parts[0] + "." + strings.Repeat("ab", 32) + "." + parts[2],
			"is not in the join token's cluster", "sent the cluster CA to a joiner"},
		{"unpinned, another secret", other,
			"cannot prove it holds the token's secret; nothing was sent", "join abandoned by the joiner after the challenge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := c.add(5, "--join", c.ip(1))
			j.Token = tc.token
			j.start()
			if code := j.wait(30 * time.Second); code == 0 {
				t.Fatal("a node with a bad token exited 0")
			}
			if l := lastLine(j.logs()); !strings.Contains(l, tc.joinerSays) {
				t.Fatalf("joiner's last line %q does not say %q", l, tc.joinerSays)
			}
			waitUntil(t, 5*time.Second, "node1 logging the refusal", func() error {
				if !strings.Contains(n1.logs(), tc.node1Says) {
					return fmt.Errorf("node1 has not logged %q", tc.node1Says)
				}
				return nil
			})
			if _, err := os.Stat(filepath.Join(j.DataDir, "tls", "node.pem")); err == nil {
				t.Fatal("the refused node holds a certificate")
			}
			m, err := n1.members()
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range m.Members {
				if x.Name == j.Name {
					t.Fatalf("the refused node is a member: %+v", x)
				}
			}
			os.RemoveAll(j.DataDir)
		})
	}

	t.Run("plaintext API", func(t *testing.T) {
		resp, err := http.Get("http://" + n1.IP + ":8500/v1/members")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || bytes.Contains(b, []byte("node1")) {
			t.Fatalf("plaintext GET /v1/members: %d %s", resp.StatusCode, b)
		}
	})
	t.Run("registry without a client certificate", func(t *testing.T) {
		// etcd's HTTP JSON gateway, as any web page would have used it.
		_, err := http.Post("http://"+n1.IP+":2379/v3/kv/put", "text/plain", strings.NewReader(`{"key":"L2hlcmQvc2VydmljZXMvZXZpbA==","value":"e30="}`))
		if err == nil {
			t.Fatal("a plaintext POST to the registry's client port was answered")
		}
		// TLS with the CA but no certificate: the handshake fails.
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.caPool()}}}
		resp, err := hc.Post("https://"+n1.IP+":2379/v3/kv/put", "application/json", strings.NewReader(`{"key":"L2hlcmQvc2VydmljZXMvZXZpbA==","value":"e30="}`))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a client without a certificate got %d from the registry", resp.StatusCode)
		}
	})
	t.Run("etcdctl", func(t *testing.T) {
		etcdctl := buildEtcdctl(t)
		ep := "https://" + n1.IP + ":2379"
		out, err := exec.Command(etcdctl, "--endpoints", ep, "--cacert", c.caFile(), "--dial-timeout", "3s", "--command-timeout", "5s", "member", "list").CombinedOutput()
		if err == nil {
			t.Fatalf("etcdctl without a client certificate listed the members:\n%s", out)
		}
		dir := t.TempDir()
		if out, err := runCLI(t, "tls", "cert", "create", "--client", "--name", "ops", "--data-dir", n1.DataDir, "--out", dir); err != nil || !strings.Contains(out, "ops.pem") {
			t.Fatalf("herd tls cert create: %v %s", err, out)
		}
		for _, f := range []string{"ca.pem", "ops.pem", "ops-key.pem"} {
			if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: %v %v", f, err, st)
			}
		}
		out, err = exec.Command(etcdctl, "--endpoints", ep, "--cacert", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "ops.pem"),
			"--key", filepath.Join(dir, "ops-key.pem"), "--dial-timeout", "3s", "--command-timeout", "5s", "member", "list").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "node1") {
			t.Fatalf("etcdctl with a herd client certificate: %v\n%s", err, out)
		}
	})
	t.Run("gossip without the key", func(t *testing.T) {
		before := metricValue(t, n1, "herd_gossip_undecryptable_total")
		mc := memberlist.DefaultLANConfig()
		mc.Name = "stranger"
		mc.BindAddr, mc.BindPort = c.ip(9), 7946
		mc.AdvertiseAddr, mc.AdvertisePort = c.ip(9), 7946
		mc.LogOutput = io.Discard
		ml, err := memberlist.Create(mc)
		if err != nil {
			t.Fatal(err)
		}
		defer ml.Shutdown()
		if _, err := ml.Join([]string{n1.IP + ":7946"}); err == nil && ml.NumMembers() > 1 {
			t.Fatalf("a plaintext gossip node joined: %d members", ml.NumMembers())
		}
		waitUntil(t, 10*time.Second, "node1 counting the stranger's messages", func() error {
			if v := metricValue(t, n1, "herd_gossip_undecryptable_total"); v <= before {
				return fmt.Errorf("herd_gossip_undecryptable_total %v, was %v", v, before)
			}
			return nil
		})
		m, _ := n1.members()
		for _, x := range m.Members {
			if x.Name == "stranger" {
				t.Fatal("the stranger is in node1's gossip view")
			}
		}
	})
}

// metricValue reads one unlabelled metric from the node's /metrics.
func metricValue(t *testing.T, n *node, name string) float64 {
	t.Helper()
	resp, err := httpClient.Get(n.api() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/metrics of %s has no %s", n.Name, name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var (
	etcdctlOnce sync.Once
	etcdctlPath string
	etcdctlErr  error
)

// buildEtcdctl builds the real etcdctl of the etcd version herd embeds
// (a tool dependency in go.mod), once per run, and returns its path.
func buildEtcdctl(t *testing.T) string {
	t.Helper()
	etcdctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "herd-etcdctl-")
		if err != nil {
			etcdctlErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		etcdctlPath = filepath.Join(dir, "etcdctl")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", etcdctlPath, "go.etcd.io/etcd/etcdctl/v3").CombinedOutput(); err != nil {
			etcdctlErr = fmt.Errorf("go build etcdctl: %v\n%s", err, out)
		}
	})
	if etcdctlErr != nil {
		t.Fatal(etcdctlErr)
	}
	return etcdctlPath
}

// startThree starts node1 and two nodes joining it, with extra agent
// arguments, and waits for three ready voters.
func startThree(t *testing.T, c *cluster, args ...string) []*node {
	t.Helper()
	n1 := c.add(1, args...)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	n2 := c.add(2, append([]string{"--join", c.ip(1)}, args...)...)
	n3 := c.add(3, append([]string{"--join", c.ip(1)}, args...)...)
	n2.start()
	n3.start()
	nodes := []*node{n1, n2, n3}
	for _, n := range nodes {
		waitUntil(t, 60*time.Second, n.Name+" ready", n.ready)
	}
	waitUntil(t, 30*time.Second, "three voters", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
	return nodes
}

// allAlive checks that n sees every node of nodes alive in gossip.
func allAlive(n *node, nodes []*node) error {
	m, err := n.members()
	if err != nil {
		return err
	}
	for _, want := range nodes {
		ok := false
		for _, x := range m.Members {
			if x.Name == want.Name && x.Status == "alive" {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%s does not see %s alive", n.Name, want.Name)
		}
	}
	return nil
}

// A gossip key rotation while a node is down: the node comes back with
// only the retired key, reads the current keyring from the registry (over
// mutual TLS, which needs no gossip), and rejoins.
func TestKeyringRotationWhileANodeIsDown(t *testing.T) {
	c := newCluster(t)
	nodes := startThree(t, c)
	rotateWhileDown(t, nodes, nodes[2])
}

// The same with the node that is down a spare: it runs no registry member,
// so it reads the keyring from the voters it recorded before it rejoins.
func TestKeyringRotationWhileASpareIsDown(t *testing.T) {
	c := newCluster(t)
	nodes := startThree(t, c)
	n4 := c.add(4, "--join", c.ip(1))
	n4.start()
	waitUntil(t, 60*time.Second, "node4 ready", n4.ready)
	waitRoles(t, nodes[0], 3, 1)
	if _, spares, _ := roles(nodes[0]); len(spares) != 1 || spares[0] != n4.Name {
		t.Fatalf("spares %v, want node4", spares)
	}
	rotateWhileDown(t, append(nodes, n4), n4)
}

// rotateWhileDown stops down, rotates the gossip key through nodes[0]
// (install, use, remove the old one), starts down again and checks it is
// back in gossip with the new key.
func rotateWhileDown(t *testing.T, nodes []*node, down *node) {
	n1, n3 := nodes[0], down
	type keyringFile struct{ Primary string }
	readKeyring := func(n *node) keyringFile {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "gossip-keyring.json"))
		if err != nil {
			t.Fatal(err)
		}
		var k keyringFile
		if err := json.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	old := readKeyring(n1).Primary
	if readKeyring(n3).Primary != old {
		t.Fatalf("%s was admitted with another gossip key", n3.Name)
	}

	n3.signal(syscall.SIGTERM)
	if code := n3.wait(30 * time.Second); code != 0 {
		t.Fatalf("%s stopped with %d", n3.Name, code)
	}
	key, err := runCLI(t, "keyring", "generate")
	if err != nil {
		t.Fatal(err)
	}
	key = strings.TrimSpace(key)
	ops := []string{"--api", n1.api(), "--data-dir", n1.DataDir}
	for _, step := range [][]string{{"keyring", "install", key}, {"keyring", "use", key}, {"keyring", "remove", old}} {
		if out, err := runCLI(t, append(step, ops...)...); err != nil {
			t.Fatalf("herd %s: %v\n%s", strings.Join(step, " "), err, out)
		}
	}
	// Refusals name what is wrong and change nothing.
	if _, err := runCLI(t, append([]string{"keyring", "remove", key}, ops...)...); err == nil || !strings.Contains(err.Error(), "is the primary key") {
		t.Fatalf("removing the primary key: %v", err)
	}
	reader := createToken(t, n1, n1.c.managementToken(), "reader", "", "read")
	if _, err := runCLI(t, "keyring", "list", "--api", n1.api(), "--token", reader); err == nil || !strings.Contains(err.Error(), "needs a token with policy operator") {
		t.Fatalf("keyring list with a read token: %v", err)
	}
	waitUntil(t, 10*time.Second, "the running nodes on the new key", func() error {
		for _, n := range nodes {
			if n == down {
				continue
			}
			if readKeyring(n).Primary != key {
				return fmt.Errorf("%s's primary is not the new key", n.Name)
			}
		}
		return nil
	})
	out, err := runCLI(t, append([]string{"keyring", "list"}, ops...)...)
	if err != nil || strings.Count(out, "(primary)") != 1 || strings.Count(out, "\n  ") != 1 {
		t.Fatalf("keyring list after the rotation: %v\n%s", err, out)
	}
	if strings.Contains(out, key) {
		t.Fatal("keyring list shows a key in clear")
	}

	n3.start()
	waitUntil(t, 60*time.Second, n3.Name+" ready", n3.ready)
	waitUntil(t, 30*time.Second, "every node sees every node alive", func() error {
		for _, n := range nodes {
			if err := allAlive(n, nodes); err != nil {
				return err
			}
		}
		return nil
	})
	if readKeyring(n3).Primary != key {
		t.Fatalf("%s rejoined without the new key", n3.Name)
	}
	if !strings.Contains(n3.logs(), "installed the cluster's gossip keyring") {
		t.Fatalf("%s did not say it caught up with the keyring", n3.Name)
	}
}

// Certificates valid for 30s are renewed by every node before they expire,
// with no restart and no failed request; after the first certificates have
// expired, new connections (a restarted peer, the API) use the renewed ones.
func TestCertificateRenewal(t *testing.T) {
	c := newCluster(t)
	nodes := startThree(t, c, "--tls-cert-validity", "30s")
	expiry := func(n *node) time.Time {
		conn, err := dialClusterTLS(context.Background(), "tcp", n.IP+":8500")
		if err != nil {
			t.Fatalf("TLS to %s: %v", n.Name, err)
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState().PeerCertificates[0].NotAfter
	}
	first := map[string]time.Time{}
	for _, n := range nodes {
		first[n.Name] = expiry(n)
		if d := time.Until(first[n.Name]); d > 31*time.Second {
			t.Fatalf("%s's certificate is valid for %s, want 30s", n.Name, d)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var failures []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			n := nodes[i%2] // node3 is killed below

			code, e := do(t, http.MethodPut, fmt.Sprintf("%s/v1/services/renew/instances/%s-%d", n.api(), n.Name, i%5), `{"address":"127.0.0.1","port":9000}`)
			if code != 200 {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("PUT via %s: %d %s", n.Name, code, e.Error))
				mu.Unlock()
			}
			if _, err := helloFrom(n.gateway()); err != nil {
				mu.Lock()
				failures = append(failures, err.Error())
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	waitUntil(t, 90*time.Second, "every node past its first certificate's expiry on a renewed one", func() error {
		for _, n := range nodes {
			if !time.Now().After(first[n.Name].Add(time.Second)) {
				return fmt.Errorf("%s's first certificate is still valid", n.Name)
			}
			if v := metricValue(t, n, "herd_tls_renewals_total"); v < 1 {
				return fmt.Errorf("%s has renewed %v times", n.Name, v)
			}
		}
		return nil
	})
	// New connections to a restarted peer need everyone's renewed
	// certificates: kill -9 node3 and bring it back.
	n3 := nodes[2]
	_ = syscall.Kill(-n3.cmd.Process.Pid, syscall.SIGKILL)
	<-n3.exited
	n3.start()
	waitUntil(t, 60*time.Second, "node3 back", n3.ready)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	// Requests through node3 while it was down are not the renewal's.
	var real []string
	for _, f := range failures {
		if !strings.Contains(f, n3.IP) && !strings.Contains(f, "via node3") {
			real = append(real, f)
		}
	}
	if len(real) > 0 {
		t.Fatalf("%d requests failed during renewals: %v", len(real), real[:min(5, len(real))])
	}
	for _, n := range nodes {
		if got := expiry(n); !got.After(first[n.Name]) {
			t.Fatalf("%s still serves its first certificate (expired %s)", n.Name, first[n.Name])
		}
	}
	code, e := do(t, http.MethodPut, n3.api()+"/v1/services/renew/instances/after", `{"address":"127.0.0.1","port":9000}`)
	if code != 200 {
		t.Fatalf("registration through the restarted node3: %d %s", code, e.Error)
	}
}

// herd token rotate: old tokens stop admitting nodes at once, the new one
// admits, running nodes carry on, and every node's token file follows.
func TestTokenRotate(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	n2 := c.add(2, "--join", c.ip(1))
	n2.start()
	waitUntil(t, 60*time.Second, "node2 ready", n2.ready)
	old, err := runCLI(t, "token", "show", "--data-dir", n2.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	old = strings.TrimSpace(old)
	if _, err := runCLI(t, "token", "rotate", "--api", n1.api(), "--token", createToken(t, n1, c.managementToken(), "reader", "", "read")); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("token rotate with a read token: %v", err)
	}
	out, err := runCLI(t, "token", "rotate", "--api", n1.api(), "--data-dir", n1.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	fresh := strings.TrimSpace(out)
	if fresh == old || !strings.HasPrefix(fresh, "herd1.") || strings.Split(fresh, ".")[1] != strings.Split(old, ".")[1] {
		t.Fatalf("rotated token %q (old %q): want a new secret and the same CA", fresh, old)
	}
	waitUntil(t, 10*time.Second, "node2's token file rotated", func() error {
		if got, _ := runCLI(t, "token", "show", "--data-dir", n2.DataDir); strings.TrimSpace(got) != fresh {
			return fmt.Errorf("node2 still shows the old token")
		}
		return nil
	})
	stale := c.add(3, "--join", c.ip(2))
	stale.Token = old
	stale.start()
	if code := stale.wait(30 * time.Second); code == 0 {
		t.Fatal("a node with the rotated-out token was admitted")
	}
	if l := lastLine(stale.logs()); !strings.Contains(l, "the cluster refused the join token") {
		t.Fatalf("stale token: last line %q", l)
	}
	os.RemoveAll(stale.DataDir)
	ok := c.add(4, "--join", c.ip(2))
	ok.Token = fresh
	ok.start()
	waitUntil(t, 60*time.Second, "node4 admitted with the new token", ok.ready)
	for _, n := range []*node{n1, n2} {
		if err := n.ready(); err != nil {
			t.Fatalf("%s after the rotation: %v", n.Name, err)
		}
	}
}

// A data dir made without transport security is not silently kept
// plaintext: the node refuses to start and says what to do.
func TestPlaintextDataDirRefused(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1, "--insecure")
	n1.start()
	waitUntil(t, 30*time.Second, "insecure node1 ready", n1.ready)
	if !strings.Contains(n1.logs(), "INSECURE: --insecure is set") {
		t.Fatal("--insecure is not said loudly")
	}
	n1.signal(syscall.SIGTERM)
	if code := n1.wait(30 * time.Second); code != 0 {
		t.Fatalf("node1 stopped with %d", code)
	}
	n1.Args = nil
	n1.start()
	if code := n1.wait(30 * time.Second); code == 0 {
		t.Fatal("a plaintext data dir started without --insecure")
	}
	l := lastLine(n1.logs())
	for _, want := range []string{"data dir was made by a herd without transport security", "--insecure", "herd snapshot save"} {
		if !strings.Contains(l, want) {
			t.Fatalf("last line %q does not say %q", l, want)
		}
	}
}

// --gateway-tls-cert/--gateway-tls-key: the gateway terminates TLS (here
// with the node's own certificate, which clients of the cluster CA trust),
// and the service behind it is told the client came over https.
func TestGatewayTLS(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	// The node's own certificate exists once it has created the cluster.
	tlsDir := filepath.Join(n1.DataDir, "tls")
	n1.Args = []string{"--gateway-tls-cert", filepath.Join(tlsDir, "node.pem"), "--gateway-tls-key", filepath.Join(tlsDir, "node-key.pem")}
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.caPool()}}}
	var body []byte
	waitUntil(t, 20*time.Second, "echo through the TLS gateway", func() error {
		resp, err := hc.Get("https://" + n1.IP + ":8080/echo/x")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})
	if !strings.Contains(strings.ToLower(string(body)), "https") {
		t.Fatalf("the service was not told the client used https: %s", body)
	}
	if resp, err := http.Get("http://" + n1.IP + ":8080/echo/x"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP was served by a TLS gateway")
		}
	}
}

// With --internal-tls a node's service host serves HTTPS with its node
// certificate to cluster members only: a peer's gateway (without the flag
// itself) reaches it with TLS and its own certificate; plaintext, and TLS
// without a cluster certificate, are refused at the service port.
func TestInternalTLS(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1, "--services", "")
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	n2 := c.add(2, "--join", n1.IP, "--internal-tls", "--services", "hello,echo")
	n2.start()
	waitUntil(t, 30*time.Second, "node2 ready", n2.ready)

	var svc struct {
		Instances []struct {
			Node string `json:"node"`
			TLS  bool   `json:"tls"`
		} `json:"instances"`
	}
	waitUntil(t, 20*time.Second, "node2's hello registered with tls", func() error {
		if code, err := getJSON(n1.api()+"/v1/services/hello", &svc); err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		if len(svc.Instances) != 1 || svc.Instances[0].Node != "node2" || !svc.Instances[0].TLS {
			return fmt.Errorf("instances %+v", svc.Instances)
		}
		return nil
	})
	// GET takes the express path, DELETE the lean forward path, POST with a
	// body httputil.ReverseProxy: each over TLS to node2.
	for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
		path := map[string]string{"GET": "/hello/"}[method]
		if path == "" {
			path = "/echo/x"
		}
		waitUntil(t, 20*time.Second, method+" "+path+" through node1's gateway", func() error {
			req, _ := http.NewRequest(method, n1.gateway()+path, strings.NewReader(map[string]string{"POST": "body"}[method]))
			resp, err := httpClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || !strings.Contains(string(b), "node2") {
				return fmt.Errorf("%d %s", resp.StatusCode, b)
			}
			if up, ok := resp.Header["X-Herd-Upstream"]; ok {
				t.Fatalf("a public client was told the serving node: X-Herd-Upstream %q", up)
			}
			return nil
		})
	}

	svcAddr := n2.IP + ":9000"
	if resp, err := http.Get("http://" + svcAddr + "/hello/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("node2's service port served plaintext HTTP")
		}
	}
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.caPool()}}}
	if resp, err := noCert.Get("https://" + svcAddr + "/hello/"); err == nil {
		resp.Body.Close()
		t.Fatalf("node2's service port served a client without a cluster certificate: %d", resp.StatusCode)
	}
	// An operator's client certificate from `herd tls cert create` is a
	// cluster certificate: it is served.
	dir := t.TempDir()
	if out, err := runCLI(t, "tls", "cert", "create", "--client", "--name", "ops", "--data-dir", n1.DataDir, "--out", dir); err != nil {
		t.Fatalf("herd tls cert create: %v %s", err, out)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "ops.pem"), filepath.Join(dir, "ops-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	withCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.caPool(), Certificates: []tls.Certificate{cert}}}}
	resp, err := withCert.Get("https://" + svcAddr + "/hello/")
	if err != nil {
		t.Fatalf("node2's service port with a cluster client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("node2's service port with a cluster client certificate: %d", resp.StatusCode)
	}
}
