package clustertest

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// formCluster starts node1 (bootstrapping) and node2, node3 joining node1,
// and waits until every gateway routes to instances on all three nodes;
// extra[i] are more agent arguments for node i+1.
func formCluster(t *testing.T, extra ...[]string) (*cluster, []*node) {
	t.Helper()
	c := newCluster(t)
	args := func(i int, a ...string) []string {
		if i < len(extra) {
			a = append(a, extra[i]...)
		}
		return a
	}
	n1 := c.add(1, args(0)...)
	n2 := c.add(2, args(1, "--join", c.ip(1))...)
	n3 := c.add(3, args(2, "--join", c.ip(1)+":7946")...)
	start := time.Now()
	for _, n := range []*node{n1, n2, n3} {
		n.start()
	}
	nodes := []*node{n1, n2, n3}
	for _, n := range nodes {
		waitUntil(t, 60*time.Second, n.Name+" ready", n.ready)
	}
	waitUntil(t, 30*time.Second, "every gateway routing to all three nodes", func() error { return allGatewaysRouteToAll(nodes) })
	t.Logf("three nodes formed: %s from process start to all three gateways routing to all three nodes", time.Since(start).Round(time.Millisecond))
	// node2 and node3 joined as spares; the autopilot promotes them.
	waitUntil(t, 30*time.Second, "three voters", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
	t.Logf("three voters %s after process start", time.Since(start).Round(time.Millisecond))
	return c, nodes
}

func TestThreeNodeCluster(t *testing.T) {
	_, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	// The default balancer, p2c, favours the fastest instance but reaches
	// every live one: through each gateway, steady requests one at a time
	// get answers from all three nodes within seconds (in practice within
	// tens of requests; the bound is p2c's estimate decay and refresh).
	for _, gw := range nodes {
		counts, err := reachAll(gw.gateway(), []string{"node1", "node2", "node3"}, 10*time.Second)
		if err != nil {
			t.Fatalf("through %s: %v", gw.Name, err)
		}
		t.Logf("through %s: every node answered within %d requests: %v", gw.Name, counts["node1"]+counts["node2"]+counts["node3"], counts)
	}
	// Under concurrent load requests in flight weigh in too: every node
	// takes a share of 300 requests from 6 clients through node1.
	shares := spread(t, n1.gateway(), 6, 300)
	for _, n := range nodes {
		if shares[n.Name] == 0 {
			t.Fatalf("300 concurrent requests through node1: none answered by %s (%v)", n.Name, shares)
		}
	}
	t.Logf("300 requests from 6 clients through node1: %v", shares)

	// herd members: three voters, one leader, all alive. node2 and node3
	// joined as spares; the autopilot promotes them once there are three
	// healthy nodes.
	waitUntil(t, 30*time.Second, "three voters", func() error {
		m, err := n2.members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
	out, err := runCLI(t, "members", "--api", n2.api())
	if err != nil {
		t.Fatal(err)
	}
	rows := table(out)
	leaders := 0
	for _, r := range rows {
		if r["ROLE"] != "voter" || r["STATUS"] != "alive" {
			t.Errorf("members row %v: want an alive voter", r)
		}
		if r["LEADER"] == "*" {
			leaders++
		}
	}
	if len(rows) != 3 || leaders != 1 {
		t.Fatalf("herd members:\n%s\nwant three voters and one leader", out)
	}
	out, err = runCLI(t, "services", "hello", "--api", n1.api())
	if err != nil || len(table(out)) != 3 {
		t.Fatalf("herd services hello:\n%s\n%v", out, err)
	}
	if _, checks, _ := strings.Cut(out, "\n\n"); len(table(checks)) != 3 || strings.Count(checks, "passing") != 3 {
		t.Fatalf("herd services hello lists its built-in checks:\n%s", out)
	}

	before, err := n3.members()
	if err != nil {
		t.Fatal(err)
	}
	n3ID := memberID(before, "node3")

	// Traffic through nodes 1 and 2 while node 3 stops gracefully: no
	// request may fail.
	load := startLoad(t, n1.gateway(), n2.gateway())
	waitUntil(t, 10*time.Second, "load running", func() error {
		if load.ok.Load() < 20 {
			return fmt.Errorf("%d requests so far", load.ok.Load())
		}
		return nil
	})
	n3.signal(syscall.SIGTERM)
	if code := n3.wait(30 * time.Second); code != 0 {
		t.Fatalf("node3 exited %d after SIGTERM", code)
	}
	afterStop := load.ok.Load()
	waitUntil(t, 10*time.Second, "traffic after node3 stopped", func() error {
		if load.ok.Load() < afterStop+50 {
			return fmt.Errorf("%d requests since", load.ok.Load()-afterStop)
		}
		return nil
	})
	load.stop()
	if errs := load.errors(); len(errs) > 0 {
		t.Fatalf("%d of %d requests failed while node3 stopped; first: %v", len(errs), load.ok.Load()+int64(len(errs)), errs[0])
	}
	t.Logf("%d requests through node1 and node2 while node3 stopped gracefully, 0 errors", load.ok.Load())
	for _, n := range []*node{n1, n2} {
		for range 10 {
			if from, err := helloFrom(n.gateway()); err != nil || from == "node3" {
				t.Fatalf("after node3 stopped, through %s: %q %v", n.Name, from, err)
			}
		}
	}
	waitUntil(t, 15*time.Second, "node3 reported as left", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		if s := memberStatus(m, "node3"); s != api.StatusLeft {
			return fmt.Errorf("node3 is %q", s)
		}
		return nil
	})
	// A stop does not change Raft membership: node3 is still a voter.
	if m, err := n1.members(); err != nil || memberRole(m, "node3") != api.RoleVoter {
		t.Fatalf("after a stop node3's role is %q (%v), want voter", memberRole(m, "node3"), err)
	}

	// node3 restarted with the same data dir and flags rejoins as the same
	// voter and serves again.
	n3.start()
	waitUntil(t, 60*time.Second, "node3 ready again", n3.ready)
	waitUntil(t, 30*time.Second, "node3 back in every gateway", func() error {
		for _, gw := range nodes {
			if _, err := reachAll(gw.gateway(), []string{"node3"}, 3*time.Second); err != nil {
				return fmt.Errorf("through %s: %w", gw.Name, err)
			}
		}
		return nil
	})
	waitUntil(t, 15*time.Second, "three alive voters", func() error {
		m, err := n1.members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
	after, _ := n1.members()
	if id := memberID(after, "node3"); id != n3ID || id == "" {
		t.Fatalf("node3 came back as member %q, was %q", id, n3ID)
	}

	// node1 bootstrapped the cluster and has no --join: restarted, it
	// finds its peers again through the gossip peers its data dir recorded.
	n1.signal(syscall.SIGTERM)
	if code := n1.wait(30 * time.Second); code != 0 {
		t.Fatalf("node1 exited %d after SIGTERM", code)
	}
	n1.start()
	waitUntil(t, 60*time.Second, "node1 ready again", n1.ready)
	waitUntil(t, 30*time.Second, "node1 alive and routed to from every gateway", func() error {
		m, err := n2.members()
		if err != nil {
			return err
		}
		if err := threeVoters(m); err != nil {
			return err
		}
		return allGatewaysRouteToAll(nodes)
	})
}

func threeVoters(m api.MembersResponse) error {
	voters, leaders := 0, 0
	for _, x := range m.Members {
		if x.Role == api.RoleVoter && x.Status == api.StatusAlive {
			voters++
		}
		if x.Leader {
			leaders++
		}
	}
	if voters != 3 || leaders != 1 || len(m.Members) != 3 {
		return fmt.Errorf("members %+v: want 3 alive voters and 1 leader", m.Members)
	}
	return nil
}

func memberID(m api.MembersResponse, name string) string {
	for _, x := range m.Members {
		if x.Name == name {
			return x.MemberID
		}
	}
	return ""
}

func memberStatus(m api.MembersResponse, name string) string {
	for _, x := range m.Members {
		if x.Name == name {
			return x.Status
		}
	}
	return ""
}

func memberRole(m api.MembersResponse, name string) string {
	for _, x := range m.Members {
		if x.Name == name {
			return x.Role
		}
	}
	return ""
}

// load sends GET /hello/ through gateways in a loop from a few clients
// until stop, recording every failure.
type load struct {
	ok   atomic.Int64
	mu   sync.Mutex
	errs []error
	done chan struct{}
	wg   sync.WaitGroup
}

func startLoad(t *testing.T, gateways ...string) *load {
	l := &load{done: make(chan struct{})}
	for i := range 4 {
		gw := gateways[i%len(gateways)]
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.done:
					return
				default:
				}
				if _, err := helloFrom(gw); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, fmt.Errorf("%s at %s: %w", gw, time.Now().Format("15:04:05.000"), err))
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
}

func (l *load) errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// Started in reverse order, each node naming one that is not up yet, the
// three still form one cluster of three voters: joins retry until their
// peers answer.
func TestStartInAnyOrder(t *testing.T) {
	c := newCluster(t)
	n3 := c.add(3, "--join", c.ip(2))
	n2 := c.add(2, "--join", c.ip(1))
	n1 := c.add(1)
	nodes := []*node{n3, n2, n1}
	for _, n := range nodes {
		n.start()
		// Each later node starts only once the earlier one is visibly
		// waiting for its peer.
		if n != n1 {
			waitUntil(t, 10*time.Second, n.Name+" retrying its join", func() error {
				if !strings.Contains(n.logs(), "cannot join yet") {
					return fmt.Errorf("not yet")
				}
				return nil
			})
		}
	}
	for _, n := range nodes {
		waitUntil(t, 60*time.Second, n.Name+" ready", n.ready)
	}
	waitUntil(t, 20*time.Second, "three voters and one leader", func() error {
		m, err := n3.members()
		if err != nil {
			return err
		}
		return threeVoters(m)
	})
}

// kill -9 of a node under load: its peers' gateways retry the requests it
// refused or reset on another instance, so idempotent requests see no error.
func TestCrashHiddenFromClients(t *testing.T) {
	_, nodes := formCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	load := startLoad(t, n1.gateway(), n2.gateway())
	waitUntil(t, 10*time.Second, "load running", func() error {
		if load.ok.Load() < 50 {
			return fmt.Errorf("%d requests so far", load.ok.Load())
		}
		return nil
	})
	n3.signal(syscall.SIGKILL)
	n3.wait(10 * time.Second)
	after := load.ok.Load()
	waitUntil(t, 20*time.Second, "traffic after the crash", func() error {
		if load.ok.Load() < after+500 {
			return fmt.Errorf("%d requests since", load.ok.Load()-after)
		}
		return nil
	})
	load.stop()
	if errs := load.errors(); len(errs) > 0 {
		t.Fatalf("%d of %d GETs failed after kill -9 of node3; first: %v", len(errs), load.ok.Load()+int64(len(errs)), errs[0])
	}
	t.Logf("%d GETs through node1 and node2 around kill -9 of node3, 0 errors", load.ok.Load())
}

// spread sends total GET /hello/ through gw from clients concurrent
// clients and returns how many answers came from each node.
func spread(t *testing.T, gw string, clients, total int) map[string]int {
	t.Helper()
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		left   atomic.Int64
		wg     sync.WaitGroup
		errs   = make(chan error, clients)
	)
	left.Store(int64(total))
	for range clients {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				from, err := helloFrom(gw)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				counts[from]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return counts
}
