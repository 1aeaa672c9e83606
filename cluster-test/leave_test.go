package clustertest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// herd leave of a spare and of a voter, a leave refused because it would
// cost the quorum, and force-leave of a dead node.
func TestLeaveAndForceLeave(t *testing.T) {
	c, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	n4 := c.add(4, "--join", c.ip(1))
	n4.start()
	waitUntil(t, 30*time.Second, "node4 ready", n4.ready)
	waitRoles(t, n1, 3, 1)
	// Registrations kept for restarts, in the registry: a node that leaves
	// or is force-left takes its own along, and nobody else's.
	for _, n := range []*node{n1, n3, n4} {
		register(t, n, "kept", n.Name)
	}
	kept := keptCounter(t, c, n1)
	for _, name := range []string{"node1", "node3", "node4"} {
		if k := kept(name); k != 1 {
			t.Fatalf("%s keeps %d registrations in the registry, want 1", name, k)
		}
	}

	// A spare leaves.
	if out, err := runCLI(t, "leave", "--api", n4.api()); err != nil || !strings.Contains(out, "node4 left") {
		t.Fatalf("herd leave (spare): %q %v", out, err)
	}
	if code := n4.wait(30 * time.Second); code != 0 {
		t.Fatalf("node4 exited %d after leave", code)
	}
	waitUntil(t, 15*time.Second, "node4 left", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		if s := memberStatus(m, "node4"); s != api.StatusLeft {
			return fmt.Errorf("node4 is %q", s)
		}
		return nil
	})
	if k := kept("node4"); k != 0 {
		t.Fatalf("node4 left, and still keeps %d registrations in the registry", k)
	}

	// node3 dies; leaving node2 now would leave two voters of which one
	// answers: refused, with the reason.
	n3.signal(syscall.SIGKILL)
	n3.wait(10 * time.Second)
	out, err := runCLI(t, "leave", "--api", n2.api())
	if err == nil || !strings.Contains(err.Error(), "would cost the registry its quorum") || !strings.Contains(err.Error(), "2 voters would remain, of which 1 answer") {
		t.Fatalf("leave below quorum: %q %v", out, err)
	}
	if err := n2.ready(); err != nil {
		t.Fatalf("node2 after a refused leave: %v", err)
	}

	// force-leave refuses a live node, then removes the dead one.
	if _, err := runCLI(t, "force-leave", "node2", "--api", n1.api()); err == nil || !strings.Contains(err.Error(), "node2 is alive") {
		t.Fatalf("force-leave of a live node: %v", err)
	}
	waitUntil(t, 30*time.Second, "node3 dead in gossip", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		if s := memberStatus(m, "node3"); s != api.StatusDead {
			return fmt.Errorf("node3 is %q", s)
		}
		return nil
	})
	if out, err := runCLI(t, "force-leave", "node3", "--api", n1.api()); err != nil {
		t.Fatalf("force-leave node3: %q %v", out, err)
	}
	waitUntil(t, 15*time.Second, "node3 gone everywhere", func() error {
		for _, n := range []*node{n1, n2} {
			m, err := n.members()
			if err != nil {
				return err
			}
			if memberStatus(m, "node3") != "" {
				return fmt.Errorf("%s still lists node3: %+v", n.Name, m.Members)
			}
		}
		return nil
	})
	if k1, k3 := kept("node1"), kept("node3"); k1 != 1 || k3 != 0 {
		t.Fatalf("after force-leave of node3: node1 keeps %d registrations (want 1), node3 %d (want 0)", k1, k3)
	}

	// Now node2 may leave: node1 answers, and is then the only voter.
	if out, err := runCLI(t, "leave", "--api", n2.api()); err != nil {
		t.Fatalf("herd leave (voter): %q %v", out, err)
	}
	if code := n2.wait(30 * time.Second); code != 0 {
		t.Fatalf("node2 exited %d after leave", code)
	}
	if entries, _ := os.ReadDir(filepath.Join(n2.DataDir, "etcd")); len(entries) > 0 {
		t.Fatalf("node2 left its member data behind: %v", entries)
	}
	waitUntil(t, 15*time.Second, "node1 the only voter, still serving", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		v, _, _ := roles(n1)
		if len(v) != 1 || v[0] != "node1" || m.Leader != "node1" {
			return fmt.Errorf("voters %v, leader %q", v, m.Leader)
		}
		return n1.ready()
	})
	if from, err := helloFrom(n1.gateway()); err != nil || from != "node1" {
		t.Fatalf("node1 serving alone: %q %v", from, err)
	}
}

// keptCounter returns a function that counts, with etcdctl and a client
// certificate from herd tls cert create, the registrations a node keeps in
// the registry for its restarts (/herd/kept/<node>/).
func keptCounter(t *testing.T, c *cluster, n *node) func(name string) int {
	t.Helper()
	etcdctl := buildEtcdctl(t)
	dir := t.TempDir()
	if out, err := runCLI(t, "tls", "cert", "create", "--client", "--name", "count", "--data-dir", n.DataDir, "--out", dir); err != nil {
		t.Fatalf("herd tls cert create: %v %s", err, out)
	}
	return func(name string) int {
		t.Helper()
		out, err := exec.Command(etcdctl, "--endpoints", "https://"+n.IP+":2379", "--cacert", filepath.Join(dir, "ca.pem"),
			"--cert", filepath.Join(dir, "count.pem"), "--key", filepath.Join(dir, "count-key.pem"), "--dial-timeout", "3s",
			"--command-timeout", "5s", "get", "/herd/kept/"+name+"/", "--prefix", "--keys-only", "-w", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl get /herd/kept/%s/: %v %s", name, err, out)
		}
		var resp struct{ Count int }
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatalf("etcdctl get: %v %s", err, out)
		}
		return resp.Count
	}
}
