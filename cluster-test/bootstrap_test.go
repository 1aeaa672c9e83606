package clustertest

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The same command on every node (the systemd unit's: --bootstrap-expect 3
// --join a,b,c), started at random moments, forms exactly one cluster of
// three voters, every time.
func TestBootstrapExpectSameCommand(t *testing.T) {
	rounds := 10
	if testing.Short() {
		rounds = 2
	}
	for round := range rounds {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			c := newCluster(t)
			join := strings.Join([]string{c.ip(1), c.ip(2), c.ip(3)}, ",")
			// Exactly the command line deploy/herd.service runs.
			nodes := []*node{c.addFromUnit(t, 1, join), c.addFromUnit(t, 2, join), c.addFromUnit(t, 3, join)}
			rand.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
			start := time.Now()
			for i, n := range nodes {
				if i > 0 {
					// The random start delay is the fault being injected.
					time.Sleep(time.Duration(rand.IntN(1500)) * time.Millisecond)
				}
				n.start()
			}
			for _, n := range nodes {
				waitUntil(t, 60*time.Second, n.Name+" ready", n.ready)
			}
			waitUntil(t, 20*time.Second, "one cluster of three voters", func() error {
				for _, n := range nodes {
					m, err := n.members()
					if err != nil {
						return err
					}
					if err := threeVoters(m); err != nil {
						return fmt.Errorf("%s: %w", n.Name, err)
					}
				}
				return nil
			})
			// One cluster: every node sees the same leader and member IDs.
			first, _ := nodes[0].members()
			for _, n := range nodes[1:] {
				m, _ := n.members()
				if m.Leader != first.Leader {
					t.Fatalf("%s sees leader %q, %s sees %q", n.Name, m.Leader, nodes[0].Name, first.Leader)
				}
				for _, x := range m.Members {
					if memberID(first, x.Name) != x.MemberID {
						t.Fatalf("%s and %s disagree on %s's member ID", n.Name, nodes[0].Name, x.Name)
					}
				}
			}
			t.Logf("formed in %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

// Nodes with different --bootstrap-expect values refuse to form anything.
func TestBootstrapExpectMismatch(t *testing.T) {
	c := newCluster(t)
	join := c.ip(1) + "," + c.ip(2)
	a := c.add(1, "--bootstrap-expect", "3", "--join", join)
	b := c.add(2, "--bootstrap-expect", "2", "--join", join)
	a.start()
	b.start()
	code := b.wait(30 * time.Second)
	if code == 0 {
		t.Fatal("node with a mismatched --bootstrap-expect exited 0")
	}
	if l := lastLine(b.logs()); !strings.Contains(l, "mismatched --bootstrap-expect: node node1") || !strings.Contains(l, "has --bootstrap-expect 3, this node 2") {
		t.Fatalf("last line %q does not explain the mismatch", l)
	}
	if a.ready() == nil {
		t.Fatal("node1 formed a cluster on its own")
	}
}
