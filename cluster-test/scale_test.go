package clustertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// Twenty-five nodes on one machine, started at once as an operator would
// (node1 creates the cluster, the others join it): every node ready, every
// gateway routing to every node's hello, every node's gossip seeing all 25
// alive, 5 voters and 20 spares; a voter killed is replaced by a spare.
// Times are logged, not asserted (make bench-scale measures them). The
// nodes run the plain build: 25 race-enabled processes take minutes to
// form on 2 cores, and every other test runs them.
func TestTwentyFiveNodes(t *testing.T) {
	const count = 25
	c := newCluster(t)
	c.bin = plainBin
	flags := []string{"--dead-voter-timeout", "5s"}
	nodes := []*node{c.add(1, flags...)}
	for i := 2; i <= count; i++ {
		nodes = append(nodes, c.add(i, append([]string{"--join", c.ip(1)}, flags...)...))
	}
	start := time.Now()
	nodes[0].start()
	for _, n := range nodes[1:] {
		n.start()
	}
	for _, n := range nodes {
		waitUntil(t, 120*time.Second, n.Name+" ready", n.ready)
	}
	t.Logf("%d nodes ready %s after the start", count, time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		seen := map[string]bool{}
		waitUntil(t, 120*time.Second, n.Name+"'s gateway routing to every node", func() error {
			for range 4 * count {
				from, err := helloFrom(n.gateway())
				if err != nil {
					return err
				}
				if seen[from] = true; len(seen) == count {
					return nil
				}
			}
			return fmt.Errorf("reached %d of %d nodes", len(seen), count)
		})
	}
	t.Logf("every gateway routed to every node %s after the start", time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		waitUntil(t, 120*time.Second, n.Name+" seeing every node alive", func() error {
			m, err := n.members()
			if err != nil {
				return err
			}
			alive := 0
			for _, x := range m.Members {
				if x.Status == api.StatusAlive {
					alive++
				}
			}
			if alive != count {
				return fmt.Errorf("%d alive", alive)
			}
			return nil
		})
	}
	waitRoles(t, nodes[0], 5, count-5)
	t.Logf("5 voters and %d spares %s after the start", count-5, time.Since(start).Round(time.Millisecond))

	victim, killed := killVoter(t, nodes[0], nodes)
	waitUntil(t, 120*time.Second, "the dead voter replaced", func() error {
		mm, err := nodes[0].members()
		if err != nil {
			return err
		}
		if memberRole(mm, victim.Name) == api.RoleVoter {
			return fmt.Errorf("%s is still a voter", victim.Name)
		}
		v, _, err := roles(nodes[0])
		if err != nil {
			return err
		}
		if len(v) != 5 {
			return fmt.Errorf("voters %v", v)
		}
		return nil
	})
	t.Logf("voter %s killed; 5 voters again after %s (dead-voter-timeout 5s)", victim.Name, time.Since(killed).Round(time.Millisecond))
}
