package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// herdBin is the binary under test, built once by TestMain; plainBin is
// the build users run (herdBin too, but under -race), for a test whose
// cluster is too large to run race-enabled on the machine.
var herdBin, plainBin string

func TestMain(m *testing.M) {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	herdBin = filepath.Join(root, "bin", "herd")
	plainBin = herdBin
	builds := [][]string{{"build", "-o", herdBin}}
	if raceEnabled {
		// A separate binary: bin/herd stays the plain build users run.
		herdBin = filepath.Join(root, "bin", "herd-race")
		builds = append(builds, []string{"build", "-race", "-o", herdBin})
	}
	for _, args := range builds {
		build := exec.Command("go", append(args, "./cmd/herd")...)
		build.Dir = root
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "cluster-test: building bin/herd:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// subnet hands each test its own 127.x.y.0/24 so tests never share an
// address and every node can use herd's default ports.
var subnet atomic.Int32

// cluster is one test's set of node processes.
type cluster struct {
	t      testing.TB
	prefix string // "127.x.y."
	dir    string
	// bin, when set, is the binary its nodes run instead of herdBin.
	bin string

	mu    sync.Mutex
	nodes map[string]*node
	// bootToken is the token `herd token generate` made for this
	// cluster's nodes before any of them had a token file.
	bootToken string
}

// clusters maps each test cluster's address prefix to it, so that the
// suite's HTTP client trusts each cluster's own CA for its addresses.
var clusters sync.Map // "127.x.y." -> *cluster

// caPool holds every cluster CA found in the cluster's data dirs (a
// snapshot restore makes a second).
func (c *cluster) caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if b, err := os.ReadFile(filepath.Join(n.DataDir, "tls", "ca.pem")); err == nil {
			pool.AppendCertsFromPEM(b)
		}
	}
	return pool
}

// caFile is a CA file of the cluster, for the CLI's --ca-file.
func (c *cluster) caFile() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		p := filepath.Join(n.DataDir, "tls", "ca.pem")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// joinToken is the token a node without an identity is started with, as
// an operator would: the one a node of the cluster keeps in its data dir,
// or else the cluster's own from `herd token generate`, which every node
// started before any has a token file is given (the first node then
// creates the cluster with its secret), so nodes may start in any order.
func (c *cluster) joinToken(self *node) string {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n == self {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(n.DataDir, "join-token")); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	if c.bootToken == "" {
		c.bootToken = generateToken(c.t)
	}
	return c.bootToken
}

// node is one herd process (or the memory of one, between restarts).
type node struct {
	c       *cluster
	Name    string
	IP      string
	DataDir string
	Args    []string // extra agent arguments
	// Command, when set, is the whole argument list (after the binary),
	// used as it is instead of the harness's own.
	Command []string
	// Token is the join token the node is started with (HERD_JOIN_TOKEN);
	// the harness finds the cluster's when it is empty, unless NoToken.
	Token   string
	NoToken bool

	cmd     *exec.Cmd
	log     *bytes.Buffer
	logMu   sync.Mutex
	exited  chan struct{}
	exitErr error
	started time.Time
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	n := subnet.Add(1)
	c := &cluster{
		t:      t,
		prefix: fmt.Sprintf("127.%d.%d.", 100+os.Getpid()%100, n),
		dir:    t.TempDir(),
		nodes:  map[string]*node{},
	}
	clusters.Store(c.prefix, c)
	t.Cleanup(c.cleanup)
	t.Cleanup(func() { clusters.Delete(c.prefix) })
	return c
}

// ip returns the address of the i-th node (1-based).
func (c *cluster) ip(i int) string { return fmt.Sprintf("%s%d", c.prefix, i) }

// add declares node i with extra agent arguments; start runs it.
func (c *cluster) add(i int, args ...string) *node {
	name := fmt.Sprintf("node%d", i)
	n := &node{c: c, Name: name, IP: c.ip(i), DataDir: filepath.Join(c.dir, name), Args: args}
	c.mu.Lock()
	c.nodes[name] = n
	c.mu.Unlock()
	return n
}

// start runs the node's process.
func (n *node) start() {
	n.c.t.Helper()
	args := append([]string{"agent", "--name", n.Name, "--bind", n.IP, "--data-dir", n.DataDir}, n.Args...)
	if n.Command != nil {
		args = n.Command
	}
	bin := herdBin
	if n.c.bin != "" {
		bin = n.c.bin
	}
	cmd := exec.Command(bin, args...)
	// Under -race a data race ends the node with status 66, which the
	// suite notices as a node that exited.
	cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1 exitcode=66")
	if _, err := os.Stat(filepath.Join(n.DataDir, "tls", "node.pem")); err != nil && n.Token == "" && !n.NoToken && !n.insecure() {
		n.Token = n.c.joinToken(n)
	}
	if n.Token != "" {
		cmd.Env = append(cmd.Env, "HERD_JOIN_TOKEN="+n.Token)
	}
	if n.log == nil {
		n.log = &bytes.Buffer{}
	}
	fmt.Fprintf(n.logWriter(), "=== start %s %s\n", bin, strings.Join(args, " "))
	cmd.Stdout, cmd.Stderr = n.logWriter(), n.logWriter()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	n.started = time.Now()
	if err := cmd.Start(); err != nil {
		n.c.t.Fatalf("start %s: %v", n.Name, err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	go func() {
		n.exitErr = cmd.Wait()
		close(n.exited)
	}()
}

type lockedWriter struct{ n *node }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.n.logMu.Lock()
	defer w.n.logMu.Unlock()
	return w.n.log.Write(p)
}

func (n *node) logWriter() io.Writer { return lockedWriter{n} }

// logs returns what the node has printed so far.
func (n *node) logs() string {
	n.logMu.Lock()
	defer n.logMu.Unlock()
	return n.log.String()
}

func (n *node) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the node's process.
func (n *node) signal(sig syscall.Signal) {
	n.c.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.c.t.Fatalf("signal %s to %s: %v", sig, n.Name, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (n *node) wait(timeout time.Duration) int {
	n.c.t.Helper()
	select {
	case <-n.exited:
	case <-time.After(timeout):
		n.c.t.Fatalf("%s did not exit within %s", n.Name, timeout)
	}
	var ee *exec.ExitError
	if errors.As(n.exitErr, &ee) {
		return ee.ExitCode()
	}
	if n.exitErr != nil {
		n.c.t.Fatalf("%s: %v", n.Name, n.exitErr)
	}
	return 0
}

func (c *cluster) cleanup() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.running() {
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.exited
		}
		if n.log != nil && strings.Contains(n.logs(), "WARNING: DATA RACE") {
			c.t.Errorf("%s: the race detector found a data race (see its log)", n.Name)
		}
	}
	if c.t.Failed() || testing.Verbose() {
		for _, n := range c.nodes {
			if n.log == nil {
				continue
			}
			path := filepath.Join(artifactDir(c.t), n.Name+".log")
			if err := os.WriteFile(path, []byte(n.logs()), 0o644); err == nil {
				c.t.Logf("%s log: %s", n.Name, path)
			}
			if c.t.Failed() {
				c.t.Logf("last lines of %s:\n%s", n.Name, tail(n.logs(), 40))
			}
		}
	}
}

// artifactDir is where a test's logs are kept after it ends.
func artifactDir(t testing.TB) string {
	dir := filepath.Join("artifacts", strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	_ = os.MkdirAll(dir, 0o755)
	abs, _ := filepath.Abs(dir)
	return abs
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// URLs of a node: the agent API speaks HTTPS (HTTP with --insecure), the
// gateway plain HTTP.
func (n *node) api() string {
	if n.insecure() {
		return "http://" + n.IP + ":8500"
	}
	return "https://" + n.IP + ":8500"
}

func (n *node) insecure() bool {
	return slices.Contains(n.Args, "--insecure") || slices.Contains(n.Command, "--insecure")
}

func (n *node) gateway() string { return "http://" + n.IP + ":8080" }

// httpClient verifies each node's certificate against its own cluster's
// CA, found by the address it dials, and sends the cluster's management
// token to its agent APIs, as an operator with HERD_TOKEN set does.
var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: operatorTransport{tlsTransport}}

// anonClient is httpClient without the token: a stranger to the ACLs.
var anonClient = &http.Client{Timeout: 5 * time.Second, Transport: tlsTransport}

var tlsTransport = &http.Transport{
	DialTLSContext:      dialClusterTLS,
	MaxIdleConnsPerHost: 16,
}

// operatorTransport adds the management token of the cluster that owns
// the address to every agent API request that carries no token.
type operatorTransport struct{ base http.RoundTripper }

func (o operatorTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "https" && r.URL.Port() == "8500" && r.Header.Get("Authorization") == "" && r.Header.Get("X-Herd-Token") == "" {
		if c := clusterOf(r.URL.Hostname()); c != nil {
			if tok := c.managementToken(); tok != "" {
				r = r.Clone(r.Context())
				r.Header.Set("Authorization", "Bearer "+tok)
			}
		}
	}
	return o.base.RoundTrip(r)
}

// clusterOf is the test cluster whose prefix host has, nil if none.
func clusterOf(host string) *cluster {
	dot := strings.LastIndexByte(host, '.')
	if v, ok := clusters.Load(host[:dot+1]); ok {
		return v.(*cluster)
	}
	return nil
}

// managementToken is the newest acl-token in the cluster's data dirs: the
// node that created the cluster writes it, a restored or reset one writes
// a newer one.
func (c *cluster) managementToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var tok string
	var newest time.Time
	for _, n := range c.nodes {
		p := filepath.Join(n.DataDir, "acl-token")
		st, err := os.Stat(p)
		if err != nil || !st.ModTime().After(newest) {
			continue
		}
		if b, err := os.ReadFile(p); err == nil {
			tok, newest = strings.TrimSpace(string(b)), st.ModTime()
		}
	}
	return tok
}

func dialClusterTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	dot := strings.LastIndexByte(host, '.')
	v, ok := clusters.Load(host[:dot+1])
	if !ok {
		return nil, fmt.Errorf("no test cluster owns %s", host)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: v.(*cluster).caPool()})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// waitUntil polls cond every 50ms until it returns nil or timeout passes,
// and fails the test with cond's last error.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		case <-tick.C:
		}
	}
}

// ready reports whether the node's /readyz answers 200.
func (n *node) ready() error {
	if !n.running() {
		return fmt.Errorf("%s has exited: %v", n.Name, n.exitErr)
	}
	resp, err := httpClient.Get(n.api() + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s /readyz: %d %s", n.Name, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// getJSON GETs url into out and returns the status code.
func getJSON(url string, out any) (int, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s: %w: %s", url, err, b)
		}
	}
	return resp.StatusCode, nil
}

// members returns the node's view of the cluster.
func (n *node) members() (api.MembersResponse, error) {
	var m api.MembersResponse
	code, err := getJSON(n.api()+"/v1/members", &m)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /v1/members: %d", code)
	}
	return m, err
}

// helloFrom GETs /hello/ through gw and returns the node that answered.
func helloFrom(gw string) (string, error) {
	resp, err := httpClient.Get(gw + "/hello/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Message string `json:"message"`
		Node    string `json:"node"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s/hello/: %d %s", gw, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &body); err != nil || body.Message != "Hello, World!" {
		return "", fmt.Errorf("GET %s/hello/: unexpected body %s", gw, b)
	}
	// Gateways name the serving node only with --debug-headers (or to a
	// trusted proxy); when they do, it must be the node that answered.
	if up, ok := resp.Header["X-Herd-Upstream"]; ok && (len(up) != 1 || up[0] != body.Node) {
		return "", fmt.Errorf("X-Herd-Upstream %q but the answer came from %q", up, body.Node)
	}
	return body.Node, nil
}

// runCLI runs the herd CLI with args and returns its stdout.
func runCLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args = withCA(args)
	cmd := exec.CommandContext(ctx, herdBin, args...)
	cmd.Env = withToken(args)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("herd %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// table parses the CLI's aligned table into rows of fields keyed by header.
func table(out string) []map[string]string {
	sc := bufio.NewScanner(strings.NewReader(out))
	var header []string
	var rows []map[string]string
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if header != nil {
				break // the first table ends here (herd services NAME lists the checks after it)
			}
			continue
		}
		if header == nil {
			header = strings.Fields(line)
			continue
		}
		// Columns are aligned: cut the line at the header's offsets.
		row := map[string]string{}
		starts := columnStarts(out, header)
		for i, h := range header {
			end := len(line)
			if i+1 < len(starts) && starts[i+1] < len(line) {
				end = starts[i+1]
			}
			if starts[i] < len(line) {
				row[h] = strings.TrimSpace(line[starts[i]:end])
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func columnStarts(out string, header []string) []int {
	first, _, _ := strings.Cut(out, "\n")
	var starts []int
	pos := 0
	for _, h := range header {
		i := strings.Index(first[pos:], h)
		starts = append(starts, pos+i)
		pos += i + len(h)
	}
	return starts
}

// withCA adds --ca-file, for a command given --api of a test cluster's
// node and no CA of its own: the CLI trusts only the cluster CA.
func withCA(args []string) []string {
	i := slices.Index(args, "--api")
	if i < 0 || i+1 >= len(args) || slices.Contains(args, "--ca-file") || slices.Contains(args, "--data-dir") {
		return args
	}
	host := strings.TrimPrefix(args[i+1], "https://")
	host, _, _ = strings.Cut(host, ":")
	dot := strings.LastIndexByte(host, '.')
	if v, ok := clusters.Load(host[:dot+1]); ok {
		if f := v.(*cluster).caFile(); f != "" {
			return append(slices.Clone(args), "--ca-file", f)
		}
	}
	return args
}

// withToken is the CLI's environment for args: with HERD_TOKEN set to the
// management token of the cluster that --api names, unless the command
// brings its own token or a data dir (whose certificate it presents).
func withToken(args []string) []string {
	env := os.Environ()
	i := slices.Index(args, "--api")
	if i < 0 || i+1 >= len(args) || slices.ContainsFunc(args, func(a string) bool {
		return a == "--token" || a == "--token-file" || a == "--data-dir"
	}) {
		return env
	}
	host := strings.TrimPrefix(args[i+1], "https://")
	host, _, _ = strings.Cut(host, ":")
	if c := clusterOf(host); c != nil {
		if tok := c.managementToken(); tok != "" {
			env = append(env, "HERD_TOKEN="+tok)
		}
	}
	return env
}

// execHerd returns a command running the herd binary with args.
func execHerd(args ...string) *exec.Cmd { return exec.Command(herdBin, args...) }

// allGatewaysRouteToAll reports whether every node's gateway reaches every
// node's hello instance within a few seconds of requests.
func allGatewaysRouteToAll(nodes []*node) error {
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	for _, gw := range nodes {
		if _, err := reachAll(gw.gateway(), names, 3*time.Second); err != nil {
			return fmt.Errorf("%s: %w", gw.Name, err)
		}
	}
	return nil
}

// reachAll sends GET /hello/ through gw, one request at a time, until every
// node in want has answered or within has passed, and returns how many
// answers came from each node.
//
// The default balancer, p2c, sends most requests to the fastest instance
// (on one machine, usually the gateway's own node), so a fixed number of
// requests proves nothing about the others; what it promises is time-bound:
// an instance that loses the draw sees its latency estimate decay (600ms)
// until it wins again, and one not asked for 5s is asked once.
func reachAll(gw string, want []string, within time.Duration) (map[string]int, error) {
	counts := map[string]int{}
	deadline := time.Now().Add(within)
	for {
		from, err := helloFrom(gw)
		if err != nil {
			return counts, err
		}
		counts[from]++
		missing := slices.DeleteFunc(slices.Clone(want), func(n string) bool { return counts[n] > 0 })
		if len(missing) == 0 {
			return counts, nil
		}
		if time.Now().After(deadline) {
			return counts, fmt.Errorf("%v not reached in %s: answers %v", missing, within, counts)
		}
	}
}

// generateToken is a new token of no cluster (`herd token generate`).
func generateToken(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(herdBin, "token", "generate").Output()
	if err != nil {
		t.Fatalf("herd token generate: %v", err)
	}
	return strings.TrimSpace(string(out))
}
