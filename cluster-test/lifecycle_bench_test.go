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

// security is the two ways the lifecycle benchmarks run: as users get it
// (TLS, the join exchange, encrypted gossip) and with --insecure, in the
// same run, so that what security costs is measured, not guessed.
var security = []struct {
	name string
	args []string
}{{"tls", nil}, {"plaintext", []string{"--insecure"}}}

// Formation: three nodes started at once with the unit's command line, to
// all three gateways routing to all three nodes. Goal: under 3 s.
func BenchmarkFormation(b *testing.B) {
	took := map[string][]time.Duration{}
	for range lifecycleRounds {
		for _, sec := range security {
			c := newCluster(b)
			join := strings.Join([]string{c.ip(1), c.ip(2), c.ip(3)}, ",")
			nodes := []*node{c.addFromUnit(b, 1, join), c.addFromUnit(b, 2, join), c.addFromUnit(b, 3, join)}
			start := time.Now()
			for _, n := range nodes {
				n.Command = append(n.Command, sec.args...)
				n.start()
			}
			waitUntil(b, 60*time.Second, "formation", func() error { return allGatewaysRouteToAll(nodes) })
			took[sec.name] = append(took[sec.name], time.Since(start))
			c.cleanup()
		}
	}
	for _, sec := range security {
		b.ReportMetric(median(took[sec.name]).Seconds(), "s/formation-"+sec.name+"(median)")
		b.Logf("formation (%s): %v, median %s", sec.name, took[sec.name], median(took[sec.name]))
	}
}

// Join: a 4th node from process start to serving through its own gateway
// (with TLS: admitted through the join exchange first). Goal: under 2 s.
func BenchmarkJoin(b *testing.B) {
	took := map[string][]time.Duration{}
	for range lifecycleRounds {
		for _, sec := range security {
			t := b
			c := newCluster(t)
			join := strings.Join([]string{c.ip(1), c.ip(2), c.ip(3)}, ",")
			nodes := []*node{c.addFromUnit(t, 1, join), c.addFromUnit(t, 2, join), c.addFromUnit(t, 3, join)}
			for _, n := range nodes {
				n.Command = append(n.Command, sec.args...)
				n.start()
			}
			waitUntil(t, 60*time.Second, "formation", func() error { return allGatewaysRouteToAll(nodes) })
			n4 := c.add(4, append([]string{"--join", join}, sec.args...)...)
			start := time.Now()
			n4.start()
			waitUntil(t, 60*time.Second, "node4 serving", func() error {
				_, err := helloFrom(n4.gateway())
				return err
			})
			took[sec.name] = append(took[sec.name], time.Since(start))
			c.cleanup()
		}
	}
	for _, sec := range security {
		b.ReportMetric(median(took[sec.name]).Seconds(), "s/join-"+sec.name+"(median)")
		b.Logf("join (%s): %v, median %s", sec.name, took[sec.name], median(took[sec.name]))
	}
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
