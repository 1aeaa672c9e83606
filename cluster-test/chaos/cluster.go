package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"
)

// Cluster is one run's herd nodes, each a real bin/herd process in its own
// network namespace.
type Cluster struct {
	Net  *Net
	Bin  string
	Dir  string // data dirs and logs
	Args []string
	TL   *Timeline

	nodes []*Node
	// token is the join token every node starts with (a formation's).
	token  string
	access registryAccess
}

// Node is one herd process, or the memory of one between restarts.
type Node struct {
	c       *Cluster
	Index   int // 0-based
	Name    string
	IP      string
	DataDir string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	paused  bool
	log     bytes.Buffer
}

// NewCluster prepares n nodes on nw; Start runs them. Every node runs the
// command a unit would: --join every node, --bootstrap-expect n.
func NewCluster(nw *Net, bin, dir string, tl *Timeline, args ...string) (*Cluster, error) {
	tok, err := newToken(bin)
	if err != nil {
		return nil, err
	}
	trustCluster(dir)
	c := &Cluster{Net: nw, Bin: bin, Dir: dir, Args: args, TL: tl, token: tok}
	for i, nn := range nw.Nodes {
		name := "n" + strconv.Itoa(i+1)
		c.nodes = append(c.nodes, &Node{c: c, Index: i, Name: name, IP: nn.IP, DataDir: filepath.Join(dir, name)})
	}
	return c, nil
}

// Nodes returns every node.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Start starts every node at once.
func (c *Cluster) Start() error {
	for _, n := range c.nodes {
		if err := n.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Start runs the node's process on its data dir.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && !n.exitedLocked() {
		return fmt.Errorf("%s is already running", n.Name)
	}
	var join []string
	for _, o := range n.c.nodes {
		join = append(join, o.IP)
	}
	args := []string{"netns", "exec", n.c.Net.Nodes[n.Index].NS, n.c.Bin, "agent",
		"--name", n.Name, "--bind", n.IP, "--data-dir", n.DataDir,
		"--join", strings.Join(join, ","), "--bootstrap-expect", strconv.Itoa(len(n.c.nodes)),
	}
	args = append(args, n.c.Args...)
	// ip netns exec execs the binary itself: the process is herd's.
	cmd := exec.Command("ip", args...)
	// The systemd unit's environment file carries the token the same way.
	cmd.Env = append(os.Environ(), "HERD_JOIN_TOKEN="+n.c.token)
	fmt.Fprintf(&n.log, "=== %s start: herd %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args[4:], " "))
	cmd.Stdout, cmd.Stderr = nodeLog{n}, nodeLog{n}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	n.cmd, n.paused = cmd, false
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
		close(exited)
	}()
	return nil
}

type nodeLog struct{ n *Node }

func (l nodeLog) Write(p []byte) (int, error) {
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	return l.n.log.Write(p)
}

// Log returns what the node printed, over all its runs.
func (n *Node) Log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *Node) exitedLocked() bool {
	select {
	case <-n.exited:
		return true
	default:
		return false
	}
}

// Running reports whether the process runs (paused counts as running).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil && !n.exitedLocked()
}

// Signal sends sig to the process.
func (n *Node) Signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.exitedLocked() {
		return fmt.Errorf("%s is not running", n.Name)
	}
	switch sig {
	case syscall.SIGSTOP:
		n.paused = true
	case syscall.SIGCONT:
		n.paused = false
	}
	return n.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (n *Node) Kill() error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not die within 10s of SIGKILL", n.Name)
	}
}

// Stop stops the node gracefully (SIGTERM) and waits up to timeout.
func (n *Node) Stop(timeout time.Duration) error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		n.mu.Lock()
		err := n.exitErr
		n.mu.Unlock()
		if err != nil {
			return fmt.Errorf("%s exited badly after SIGTERM: %v", n.Name, err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s did not stop within %s of SIGTERM", n.Name, timeout)
	}
}

// WaitExit waits for the process to end by itself (after a leave).
func (n *Node) WaitExit(timeout time.Duration) error {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s did not exit within %s", n.Name, timeout)
	}
}

// Wipe deletes the node's data dir (the node must be down).
func (n *Node) Wipe() error { return os.RemoveAll(n.DataDir) }

// Close kills every node (resuming paused ones first) and keeps their logs
// in dir when it is not empty.
func (c *Cluster) Close(logDir string) {
	for _, n := range c.nodes {
		_ = n.Kill()
		if logDir != "" {
			_ = os.WriteFile(filepath.Join(logDir, n.Name+".log"), []byte(n.Log()), 0o644)
		}
	}
}

// URLs of a node.
func (n *Node) API() string     { return "https://" + n.IP + ":8500" }
func (n *Node) Gateway() string { return "http://" + n.IP + ":8080" }

// client is for the harness's own control requests (not the workload's).
var client = &http.Client{Timeout: 5 * time.Second, Transport: apiTransport(managementToken)}

// getJSON GETs url into out; the status code and transport error come back.
func getJSON(ctx context.Context, hc *http.Client, url string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil && resp.StatusCode < 300 {
			return resp.StatusCode, fmt.Errorf("GET %s: %v in %.200q", url, err, body)
		}
	}
	return resp.StatusCode, nil
}

// Ready reports why the node is not ready, or nil.
func (n *Node) Ready() error {
	var rd api.Readiness
	code, err := getJSON(context.Background(), client, n.API()+"/readyz", &rd)
	if err != nil {
		return fmt.Errorf("%s: %v", n.Name, err)
	}
	if code != 200 {
		return fmt.Errorf("%s: readyz %d %s: %s", n.Name, code, rd.Status, rd.Reason)
	}
	return nil
}

// Members returns the node's view of the cluster.
func (n *Node) Members() (api.MembersResponse, error) {
	var m api.MembersResponse
	code, err := getJSON(context.Background(), client, n.API()+"/v1/members", &m)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /v1/members: %d", code)
	}
	return m, err
}

// Leader returns the leader's name as node n sees it.
func (n *Node) Leader() (string, error) {
	m, err := n.Members()
	if err != nil {
		return "", err
	}
	if m.Leader == "" {
		return "", fmt.Errorf("%s sees no leader (%s)", n.Name, m.Error)
	}
	return m.Leader, nil
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// waitFor polls cond every 200ms until it returns nil or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Healthy reports why the cluster is not whole: every node ready, one
// leader that every node names, every node alive in every node's gossip,
// voters as expected, and no registry alarm.
func (c *Cluster) Healthy(voters int) error {
	leader := ""
	for _, n := range c.nodes {
		if err := n.Ready(); err != nil {
			return err
		}
		m, err := n.Members()
		if err != nil {
			return fmt.Errorf("%s: %v", n.Name, err)
		}
		if m.Error != "" {
			return fmt.Errorf("%s: %s", n.Name, m.Error)
		}
		if len(m.Alarms) > 0 {
			return fmt.Errorf("%s: registry alarms %v", n.Name, m.Alarms)
		}
		if leader == "" {
			leader = m.Leader
		}
		if m.Leader == "" || m.Leader != leader {
			return fmt.Errorf("%s names leader %q, %s named %q", n.Name, m.Leader, c.nodes[0].Name, leader)
		}
		nv := 0
		for _, mm := range m.Members {
			if mm.Status != "alive" {
				return fmt.Errorf("%s sees %s %s", n.Name, mm.Name, mm.Status)
			}
			if mm.Role == api.RoleVoter {
				nv++
			}
		}
		if len(m.Members) != len(c.nodes) {
			return fmt.Errorf("%s sees %d members, want %d", n.Name, len(m.Members), len(c.nodes))
		}
		if nv != voters {
			return fmt.Errorf("%s sees %d voters, want %d", n.Name, nv, voters)
		}
		if n == c.nodes[0] {
			if err := c.votersServe(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// votersServe checks that every voter of the member list is served by its
// node: a node rebuilt with an empty data dir comes back as a spare under
// the same name, and until it has replaced its stale member the list still
// shows a voter of that name that nothing serves.
func (c *Cluster) votersServe(m api.MembersResponse) error {
	for _, mm := range m.Members {
		if mm.Role != api.RoleVoter {
			continue
		}
		n := c.Node(mm.Name)
		if n == nil {
			return fmt.Errorf("voter %s is no node of the cluster", mm.Name)
		}
		ep := "https://" + n.IP + ":2379"
		cli, err := c.registryClient([]string{ep})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		cli.Close()
		if err != nil {
			return fmt.Errorf("voter %s (member %s): its node does not serve it: %v", mm.Name, mm.MemberID, err)
		}
		if got := strconv.FormatUint(st.Header.MemberId, 16); got != mm.MemberID {
			return fmt.Errorf("voter %s is member %s, but its node serves member %s (a stale member)", mm.Name, mm.MemberID, got)
		}
	}
	return nil
}

var errNoLeader = errors.New("no node names a leader")

// LeaderNode returns the node the majority of reachable nodes name leader.
func (c *Cluster) LeaderNode() (*Node, error) {
	votes := map[string]int{}
	for _, n := range c.nodes {
		if l, err := n.Leader(); err == nil {
			votes[l]++
		}
	}
	best, bestN := "", 0
	for l, k := range votes {
		if k > bestN {
			best, bestN = l, k
		}
	}
	if best == "" {
		return nil, errNoLeader
	}
	return c.Node(best), nil
}
