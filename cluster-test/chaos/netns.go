package chaos

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Everything the suite creates is named with these prefixes, so that
// Cleanup can find what an interrupted run left behind: network namespaces
// "hchaos-<id>-<node>", links "hc<id>br" (the bridge) and "hc<id>v<i>" (the
// host ends of the veth pairs), and directories "/tmp/hchaos-<id>". The
// file "/tmp/hchaos-<id>.owner" holds the PID of the process that made the
// run, so that a later run can tell a dead run's leftovers (SIGKILL leaves
// them) from a live concurrent one's (CleanupStale).
const (
	nsPrefix   = "hchaos-"
	linkPrefix = "hc"
	// chain is the iptables chain, in every node's namespace, that holds
	// the partition rules; healing flushes it.
	chain = "HERDCHAOS"
)

var (
	nsName   = regexp.MustCompile(`^hchaos-[0-9a-f]{4}-n[0-9]+$`)
	linkName = regexp.MustCompile(`^hc[0-9a-f]{4}(br|v[0-9]+)$`)
)

// Net is one run's private network: a bridge in the host namespace holding
// the address .254 of a /24 that no route of this machine uses, and one
// namespace per node, each with a veth pair into the bridge and its own
// address. The test process reaches every node over the bridge; nodes reach
// each other through it. Nothing is routed anywhere else.
type Net struct {
	ID     string
	Prefix string // "10.213.x." : node i has Prefix+i, the host Prefix+"254"
	Bridge string
	Nodes  []NetNode
}

// NetNode is one node's namespace.
type NetNode struct {
	NS   string
	Veth string // host end
	IP   string
}

// HostIP is the address of the test process on the bridge.
func (n *Net) HostIP() string { return n.Prefix + "254" }

// run runs a command and returns its error with the command's output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNS runs a command inside namespace ns.
func inNS(ns string, args ...string) error {
	return run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// CheckRoot explains why the suite cannot run when it lacks what it needs:
// root, ip, iptables and tc.
func CheckRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the chaos suite needs root: it creates network namespaces, veth pairs, a bridge and iptables rules (run it with sudo, or as root)")
	}
	for _, tool := range []string{"ip", "iptables", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the chaos suite needs %s (Debian packages iproute2 and iptables): %v", tool, err)
		}
	}
	return nil
}

// NewNet creates the bridge and n namespaces. On error it removes what it
// made.
func NewNet(n int) (_ *Net, err error) {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	// The third octet comes from the ID so that concurrent runs do not
	// share a subnet; 1..250.
	third := (int(b[0])<<8|int(b[1]))%250 + 1
	nw := &Net{ID: id, Prefix: fmt.Sprintf("10.213.%d.", third), Bridge: linkPrefix + id + "br"}
	// The owner first: nothing of the run exists without it.
	if err := os.WriteFile(ownerFile(id), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			nw.Close()
		}
	}()
	if err := run("ip", "link", "add", nw.Bridge, "type", "bridge", "nf_call_iptables", "0"); err != nil {
		return nil, err
	}
	if err := run("ip", "addr", "add", nw.HostIP()+"/24", "dev", nw.Bridge); err != nil {
		return nil, err
	}
	if err := run("ip", "link", "set", nw.Bridge, "up"); err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		nn := NetNode{
			NS:   fmt.Sprintf("%s%s-n%d", nsPrefix, id, i),
			Veth: fmt.Sprintf("%s%sv%d", linkPrefix, id, i),
			IP:   nw.Prefix + strconv.Itoa(i),
		}
		nw.Nodes = append(nw.Nodes, nn)
		peer := fmt.Sprintf("%s%sp%d", linkPrefix, id, i)
		steps := [][]string{
			{"ip", "netns", "add", nn.NS},
			{"ip", "link", "add", nn.Veth, "type", "veth", "peer", "name", peer},
			{"ip", "link", "set", peer, "netns", nn.NS},
			{"ip", "link", "set", nn.Veth, "master", nw.Bridge},
			{"ip", "link", "set", nn.Veth, "up"},
			{"ip", "netns", "exec", nn.NS, "ip", "link", "set", peer, "name", "eth0"},
			{"ip", "netns", "exec", nn.NS, "ip", "addr", "add", nn.IP + "/24", "dev", "eth0"},
			{"ip", "netns", "exec", nn.NS, "ip", "link", "set", "eth0", "up"},
			{"ip", "netns", "exec", nn.NS, "ip", "link", "set", "lo", "up"},
			{"ip", "netns", "exec", nn.NS, "iptables", "-N", chain},
			{"ip", "netns", "exec", nn.NS, "iptables", "-I", "INPUT", "-j", chain},
			{"ip", "netns", "exec", nn.NS, "iptables", "-I", "OUTPUT", "-j", chain},
		}
		for _, s := range steps {
			if err := run(s[0], s[1:]...); err != nil {
				return nil, err
			}
		}
	}
	return nw, nil
}

// Drop silently drops every packet node i sends to or receives from the
// address ip (both ways when both is set; otherwise only what i sends).
func (n *Net) Drop(i int, ip string, both bool) error {
	ns := n.Nodes[i].NS
	if err := inNS(ns, "iptables", "-A", chain, "-d", ip, "-j", "DROP"); err != nil {
		return err
	}
	if both {
		return inNS(ns, "iptables", "-A", chain, "-s", ip, "-j", "DROP")
	}
	return nil
}

// RefuseLocal makes node i refuse its own connections to its address ip
// and port (a reset), and nothing else: what it serves there stays
// reachable from other nodes.
func (n *Net) RefuseLocal(i int, ip string, port int) error {
	return inNS(n.Nodes[i].NS, "iptables", "-A", chain, "-p", "tcp", "-s", ip, "-d", ip, "--dport", strconv.Itoa(port),
		"-j", "REJECT", "--reject-with", "tcp-reset")
}

// Heal removes every partition rule and bandwidth cap of node i.
func (n *Net) Heal(i int) error {
	ns := n.Nodes[i].NS
	if err := inNS(ns, "iptables", "-F", chain); err != nil {
		return err
	}
	// No qdisc to delete is not an error worth reporting.
	_ = inNS(ns, "tc", "qdisc", "del", "dev", "eth0", "root")
	return nil
}

// Throttle caps what node i sends to rate (tc tbf, e.g. "256kbit").
func (n *Net) Throttle(i int, rate string) error {
	return inNS(n.Nodes[i].NS, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
}

// Close kills whatever still runs in the namespaces and deletes them and
// the bridge.
func (n *Net) Close() error {
	var errs []string
	for _, nn := range n.Nodes {
		killNS(nn.NS)
		if err := run("ip", "netns", "del", nn.NS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err.Error())
		}
		_ = run("ip", "link", "del", nn.Veth) // gone with the namespace, normally
	}
	if err := run("ip", "link", "del", n.Bridge); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing the chaos network: %s", strings.Join(errs, "; "))
	}
	_ = os.Remove(ownerFile(n.ID))
	return nil
}

func ownerFile(id string) string { return filepath.Join(os.TempDir(), nsPrefix+id+".owner") }

// CleanupStale removes what runs whose process is gone left behind (a run
// killed with SIGKILL cannot clean up after itself): the namespaces of a
// run with no owner file, or whose owner PID is not alive. Runs of live
// processes are left alone. It returns what it removed.
func CleanupStale() ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w", err)
	}
	seen := map[string]bool{}
	var removed []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !nsName.MatchString(f[0]) {
			continue
		}
		id := strings.TrimPrefix(f[0], nsPrefix)[:4]
		if seen[id] {
			continue
		}
		seen[id] = true
		if b, err := os.ReadFile(ownerFile(id)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) != syscall.ESRCH {
				continue // a live run's
			}
		}
		r, err := Cleanup(id)
		removed = append(removed, r...)
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// killAll kills the processes of every namespace of nw.
func killAll(nw *Net) {
	for _, nn := range nw.Nodes {
		killNS(nn.NS)
	}
}

// killNS kills every process in namespace ns (after a SIGCONT, so that a
// paused one dies too).
func killNS(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Cleanup removes everything the suite may have left behind: processes in
// its namespaces, the namespaces, its links and its /tmp directories; with
// id set, only those of the run with that network ID. It touches only names
// made by NewNet. It returns what it removed.
func Cleanup(id string) ([]string, error) {
	mine := func(name string) bool {
		return id == "" || strings.HasPrefix(name, nsPrefix+id+"-") || strings.HasPrefix(name, linkPrefix+id)
	}
	var removed, errs []string
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !nsName.MatchString(f[0]) || !mine(f[0]) {
			continue
		}
		killNS(f[0])
		if err := run("ip", "netns", "del", f[0]); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		removed = append(removed, "netns "+f[0])
	}
	out, err = exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		return removed, fmt.Errorf("ip link show: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// "12: hc1a2bbr: <...>" or "13: hc1a2bv1@if2: <...>"
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !linkName.MatchString(name) || !mine(name) {
			continue
		}
		if err := run("ip", "link", "del", name); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err.Error())
			continue
		}
		removed = append(removed, "link "+name)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+id+"*"))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		removed = append(removed, "dir "+d)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("cleanup: %s", strings.Join(errs, "; "))
	}
	return removed, nil
}
