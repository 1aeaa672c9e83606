package clustertest

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

func register(t *testing.T, n *node, service, id string) {
	t.Helper()
	body := fmt.Sprintf(`{"address":%q,"port":9000,"path":"/hello"}`, n.IP)
	if code, e := do(t, http.MethodPut, n.api()+"/v1/services/"+service+"/instances/"+id, body); code != 200 {
		t.Fatalf("register %s/%s on %s: %d %+v", service, id, n.Name, code, e)
	}
}

// instanceIDs returns the IDs of service's instances as n's catalog has them.
func instanceIDs(n *node, service string) ([]string, error) {
	var svc api.ServiceResponse
	code, err := getJSON(n.api()+"/v1/services/"+service, &svc)
	if err != nil {
		return nil, err
	}
	if code == 404 {
		return nil, nil
	}
	if code != 200 {
		return nil, fmt.Errorf("GET /v1/services/%s: %d", service, code)
	}
	var ids []string
	for _, in := range svc.Instances {
		ids = append(ids, in.ID)
	}
	return ids, nil
}

func waitInstances(t *testing.T, nodes []*node, service string, want ...string) {
	t.Helper()
	waitUntil(t, 60*time.Second, fmt.Sprintf("%s instances %v everywhere", service, want), func() error {
		for _, n := range nodes {
			ids, err := instanceIDs(n, service)
			if err != nil {
				return err
			}
			if !slices.Equal(ids, want) {
				return fmt.Errorf("%s has %v", n.Name, ids)
			}
		}
		return nil
	})
}

func aliveVoters(n *node) (int, error) {
	v, _, err := roles(n)
	return len(v), err
}

// All nodes stopped, then started again in random order: the same cluster
// comes back with every registration of its nodes.
func TestFullClusterRestart(t *testing.T) {
	_, nodes := formCluster(t)
	register(t, nodes[0], "kept", "a")
	register(t, nodes[1], "kept", "b")
	register(t, nodes[2], "kept", "c")
	waitInstances(t, nodes, "kept", "a", "b", "c")
	before, err := nodes[0].members()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.signal(syscall.SIGTERM)
	}
	for _, n := range nodes {
		if code := n.wait(60 * time.Second); code != 0 {
			t.Fatalf("%s exited %d", n.Name, code)
		}
	}
	order := slices.Clone(nodes)
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for _, n := range order {
		n.start()
	}
	for _, n := range nodes {
		waitUntil(t, 60*time.Second, n.Name+" ready after the restart", n.ready)
	}
	waitUntil(t, 30*time.Second, "the same three voters", func() error {
		m, err := nodes[0].members()
		if err != nil {
			return err
		}
		if err := threeVoters(m); err != nil {
			return err
		}
		for _, x := range before.Members {
			if memberID(m, x.Name) != x.MemberID {
				return fmt.Errorf("%s is member %s, was %s", x.Name, memberID(m, x.Name), x.MemberID)
			}
		}
		return nil
	})
	waitInstances(t, nodes, "kept", "a", "b", "c")
}

// Two of three voters lost for good: --force-new-cluster on the survivor
// brings the registry back with its registrations, two new nodes join, and
// the cluster is back to three voters.
func TestMajorityLossForceNewCluster(t *testing.T) {
	c, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	register(t, n1, "kept", "k1")
	waitInstances(t, nodes, "kept", "k1")
	n2.signal(syscall.SIGKILL)
	n3.signal(syscall.SIGKILL)
	n2.wait(10 * time.Second)
	n3.wait(10 * time.Second)
	n1.signal(syscall.SIGTERM)
	if code := n1.wait(60 * time.Second); code != 0 {
		t.Fatalf("node1 exited %d", code)
	}

	n1.Args = append(n1.Args, "--force-new-cluster")
	n1.start()
	waitUntil(t, 60*time.Second, "node1 ready as a one-member cluster", n1.ready)
	waitInstances(t, []*node{n1}, "kept", "k1")

	n4 := c.add(4, "--join", c.ip(1))
	n5 := c.add(5, "--join", c.ip(1))
	n4.start()
	n5.start()
	for _, n := range []*node{n4, n5} {
		waitUntil(t, 60*time.Second, n.Name+" ready", n.ready)
	}
	waitUntil(t, 60*time.Second, "three voters again", func() error {
		k, err := aliveVoters(n1)
		if err != nil {
			return err
		}
		if k != 3 {
			return fmt.Errorf("%d alive voters", k)
		}
		return nil
	})
	waitInstances(t, []*node{n1, n4, n5}, "kept", "k1")

	// The flag acts once: node1 restarted with it still given stays in
	// the cluster it now shares with node4 and node5.
	n1.signal(syscall.SIGTERM)
	if code := n1.wait(60 * time.Second); code != 0 {
		t.Fatalf("node1 exited %d", code)
	}
	n1.start()
	waitUntil(t, 60*time.Second, "node1 back", n1.ready)
	if !strings.Contains(n1.logs(), "--force-new-cluster ignored") {
		t.Error("node1 did not say it ignored the repeated --force-new-cluster")
	}
	waitUntil(t, 60*time.Second, "still three voters", func() error {
		k, err := aliveVoters(n4)
		if err != nil {
			return err
		}
		if k != 3 {
			return fmt.Errorf("%d alive voters", k)
		}
		return nil
	})
}

// A snapshot saved from a running cluster and restored into a fresh one has
// the same registrations.
func TestSnapshotSaveRestore(t *testing.T) {
	a := newCluster(t)
	src := a.add(1)
	src.start()
	waitUntil(t, 30*time.Second, "source ready", src.ready)
	for _, id := range []string{"s1", "s2", "s3"} {
		register(t, src, "saved", id)
	}
	waitInstances(t, []*node{src}, "saved", "s1", "s2", "s3")
	file := filepath.Join(t.TempDir(), "herd.snapshot")
	if out, err := runCLI(t, "snapshot", "save", file, "--api", src.api()); err != nil || !strings.Contains(out, "snapshot saved") {
		t.Fatalf("snapshot save: %q %v", out, err)
	}

	b := newCluster(t)
	dst := b.add(1)
	if out, err := runCLI(t, "snapshot", "restore", file, "--name", dst.Name, "--data-dir", dst.DataDir, "--bind", dst.IP); err != nil {
		t.Fatalf("snapshot restore: %q %v", out, err)
	}
	if _, err := runCLI(t, "snapshot", "restore", file, "--name", dst.Name, "--data-dir", dst.DataDir, "--bind", dst.IP); err == nil {
		t.Fatal("a second restore over the restored data succeeded")
	}
	dst.start()
	waitUntil(t, 30*time.Second, "restored node ready", dst.ready)
	ids, err := instanceIDs(dst, "saved")
	if err != nil || !slices.Equal(ids, []string{"s1", "s2", "s3"}) {
		t.Fatalf("restored registry has %v (%v), want s1 s2 s3", ids, err)
	}
}
