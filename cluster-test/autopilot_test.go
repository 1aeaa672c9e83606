package clustertest

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// roles returns "voters=N spares=M" as n sees the cluster, counting only
// alive nodes, plus the names by role.
func roles(n *node) (voters, spares []string, err error) {
	m, err := n.members()
	if err != nil {
		return nil, nil, err
	}
	for _, x := range m.Members {
		if x.Status != api.StatusAlive {
			continue
		}
		switch x.Role {
		case api.RoleVoter:
			voters = append(voters, x.Name)
		case api.RoleSpare:
			spares = append(spares, x.Name)
		}
	}
	sort.Strings(voters)
	sort.Strings(spares)
	return voters, spares, nil
}

func waitRoles(t testing.TB, n *node, wantVoters, wantSpares int) {
	t.Helper()
	waitUntil(t, 90*time.Second, fmt.Sprintf("%d voters and %d spares", wantVoters, wantSpares), func() error {
		v, s, err := roles(n)
		if err != nil {
			return err
		}
		if len(v) != wantVoters || len(s) != wantSpares {
			return fmt.Errorf("voters %v, spares %v", v, s)
		}
		return nil
	})
}

// Nodes 4 to 7 join one after another and then two at once: the autopilot
// keeps the voter count odd (3 + 1 spare, then 5, then 5 + 2 spares). A
// voter killed for good is replaced after --dead-voter-timeout with the
// registrations intact, and comes back later as a spare, not a conflict.
func TestVotersSparesAndReplacement(t *testing.T) {
	c := newCluster(t)
	flags := []string{"--dead-voter-timeout", "5s"}
	n1 := c.add(1, flags...)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	join := append([]string{"--join", c.ip(1)}, flags...)
	nodes := []*node{n1}
	add := func(i int) *node {
		n := c.add(i, join...)
		n.start()
		nodes = append(nodes, n)
		return n
	}
	add(2)
	add(3)
	waitRoles(t, n1, 3, 0)
	n4 := add(4)
	waitUntil(t, 30*time.Second, "node4 ready", n4.ready)
	waitRoles(t, n1, 3, 1)
	add(5)
	waitRoles(t, n1, 5, 0)
	add(6)
	add(7)
	waitRoles(t, n1, 5, 2)
	for _, n := range nodes {
		waitUntil(t, 30*time.Second, n.Name+" ready", n.ready)
	}

	// A registration held by a node that stays.
	body := fmt.Sprintf(`{"address":%q,"port":9000,"path":"/hello"}`, n1.IP)
	if code, e := do(t, http.MethodPut, n1.api()+"/v1/services/kept/instances/k1", body); code != 200 {
		t.Fatalf("register: %d %+v", code, e)
	}

	victim, killed := killVoter(t, n1, nodes)
	waitUntil(t, 90*time.Second, "the dead voter replaced", func() error {
		v, s, err := roles(n1)
		if err != nil {
			return err
		}
		mm, err := n1.members()
		if err != nil {
			return err
		}
		if memberRole(mm, victim.Name) == api.RoleVoter {
			return fmt.Errorf("%s is still a voter", victim.Name)
		}
		if len(v) != 5 || len(s) != 1 {
			return fmt.Errorf("voters %v, spares %v", v, s)
		}
		return nil
	})
	t.Logf("voter %s killed; replaced and back at 5 voters after %s (dead-voter-timeout 5s)", victim.Name, time.Since(killed).Round(time.Millisecond))
	for _, n := range nodes {
		if n == victim {
			continue
		}
		var svc api.ServiceResponse
		if code, err := getJSON(n.api()+"/v1/services/kept", &svc); err != nil || code != 200 || len(svc.Instances) != 1 {
			t.Fatalf("%s lost the registration: %d %v %+v", n.Name, code, err, svc)
		}
	}

	// The killed node comes back with its old data: its member was removed,
	// so it clears it and serves as a spare.
	victim.start()
	waitUntil(t, 60*time.Second, victim.Name+" ready again", victim.ready)
	waitRoles(t, n1, 5, 2)
	if l := victim.logs(); !strings.Contains(l, "carrying on as a spare") && !strings.Contains(l, "clearing its member data") {
		t.Errorf("%s did not say it came back as a spare", victim.Name)
	}
}

// A node rebuilt with the same name and an empty data dir rejoins: it
// replaces its stale member instead of being refused.
func TestRebuiltNodeRejoins(t *testing.T) {
	_, nodes := formCluster(t)
	n1, n3 := nodes[0], nodes[2]
	before, err := n1.members()
	if err != nil {
		t.Fatal(err)
	}
	oldID := memberID(before, "node3")
	n3.signal(syscall.SIGKILL)
	n3.wait(10 * time.Second)
	if err := os.RemoveAll(n3.DataDir); err != nil {
		t.Fatal(err)
	}
	n3.start()
	waitUntil(t, 60*time.Second, "node3 ready", n3.ready)
	waitUntil(t, 60*time.Second, "node3 a voter again under a new member", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		if err := threeVoters(m); err != nil {
			return err
		}
		if id := memberID(m, "node3"); id == oldID {
			return fmt.Errorf("node3 still has its old member %s", id)
		}
		return nil
	})
	for _, gw := range nodes {
		waitUntil(t, 20*time.Second, "node3 reached through "+gw.Name, func() error {
			_, err := reachAll(gw.gateway(), []string{"node3"}, 3*time.Second)
			return err
		})
	}
}

// killVoter kills with SIGKILL a voter of nodes that is neither the leader
// nor from, as from's view of the members says, and returns it and when.
func killVoter(t *testing.T, from *node, nodes []*node) (*node, time.Time) {
	t.Helper()
	m, err := from.members()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if memberRole(m, n.Name) == api.RoleVoter && m.Leader != n.Name && n != from {
			killed := time.Now()
			n.signal(syscall.SIGKILL)
			n.wait(10 * time.Second)
			return n, killed
		}
	}
	t.Fatalf("no non-leader voter to kill: %+v", m)
	return nil, time.Time{}
}
