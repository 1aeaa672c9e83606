package clustertest

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// The lifecycle benchmarks (run by bench/lifecycle.sh) time what an operator
// waits for. Each runs its scenario 5 times on fresh nodes and reports the
// median; use -benchtime=1x.
const lifecycleRounds = 5

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Formation: three nodes started at once with the unit's command line, to
// all three gateways routing to all three nodes. Goal: under 3 s.
func BenchmarkFormation(b *testing.B) {
	var took []time.Duration
	for range lifecycleRounds {
		c := newCluster(b)
		join := strings.Join([]string{c.ip(1), c.ip(2), c.ip(3)}, ",")
		nodes := []*node{c.addFromUnit(b, 1, join), c.addFromUnit(b, 2, join), c.addFromUnit(b, 3, join)}
		start := time.Now()
		for _, n := range nodes {
			n.start()
		}
		waitUntil(b, 60*time.Second, "formation", func() error { return allGatewaysRouteToAll(nodes) })
		took = append(took, time.Since(start))
		c.cleanup()
	}
	b.ReportMetric(median(took).Seconds(), "s/formation(median)")
	b.Logf("formation: %v, median %s", took, median(took))
}

// Join: a 4th node from process start to serving through its own gateway.
// Goal: under 2 s.
func BenchmarkJoin(b *testing.B) {
	var took []time.Duration
	for range lifecycleRounds {
		t := b
		c := newCluster(t)
		join := strings.Join([]string{c.ip(1), c.ip(2), c.ip(3)}, ",")
		nodes := []*node{c.addFromUnit(t, 1, join), c.addFromUnit(t, 2, join), c.addFromUnit(t, 3, join)}
		for _, n := range nodes {
			n.start()
		}
		waitUntil(t, 60*time.Second, "formation", func() error { return allGatewaysRouteToAll(nodes) })
		n4 := c.add(4, "--join", join)
		start := time.Now()
		n4.start()
		waitUntil(t, 60*time.Second, "node4 serving", func() error {
			_, err := helloFrom(n4.gateway())
			return err
		})
		took = append(took, time.Since(start))
		c.cleanup()
	}
	b.ReportMetric(median(took).Seconds(), "s/join(median)")
	b.Logf("join: %v, median %s", took, median(took))
}

// Replacement: from kill -9 of a voter to the voters back at the desired
// count, minus --dead-voter-timeout (3 voters and a spare).
func BenchmarkReplacement(b *testing.B) {
	const timeout = 2 * time.Second
	var took []time.Duration
	for range lifecycleRounds {
		t := b
		c := newCluster(t)
		flags := []string{"--dead-voter-timeout", timeout.String()}
		n1 := c.add(1, flags...)
		n1.start()
		waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
		var nodes = []*node{n1}
		for i := 2; i <= 4; i++ {
			n := c.add(i, append([]string{"--join", c.ip(1)}, flags...)...)
			n.start()
			nodes = append(nodes, n)
		}
		waitRoles(t, n1, 3, 1)
		m, _ := n1.members()
		var victim *node
		for _, n := range nodes[1:] {
			if memberRole(m, n.Name) == api.RoleVoter && m.Leader != n.Name {
				victim = n
				break
			}
		}
		start := time.Now()
		victim.signal(syscall.SIGKILL)
		waitUntil(t, 120*time.Second, "replacement", func() error {
			mm, err := n1.members()
			if err != nil {
				return err
			}
			v, _, _ := roles(n1)
			if memberRole(mm, victim.Name) == api.RoleVoter || len(v) != 3 {
				return fmt.Errorf("voters %v", v)
			}
			return nil
		})
		took = append(took, time.Since(start)-timeout)
		c.cleanup()
	}
	b.ReportMetric(median(took).Seconds(), "s/replacement-minus-timeout(median)")
	b.Logf("replacement minus the %s timeout: %v, median %s", timeout, took, median(took))
}
