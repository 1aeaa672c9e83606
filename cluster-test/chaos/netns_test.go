package chaos

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// reach reports how a TCP connect from namespace ns to ip:1 ends: "refused"
// when a packet came back (nothing listens there), "silent" when none did.
func reach(t *testing.T, ns, ip string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "timeout", "1", "bash", "-c", "echo > /dev/tcp/"+ip+"/1")
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil:
		t.Fatalf("something listens on %s:1 in the test network", ip)
	case strings.Contains(string(out), "refused"):
		return "refused"
	}
	return "silent"
}

// The harness's network: nodes reach each other, a partition drops packets
// silently (both ways or one way), healing restores them, and closing the
// network leaves nothing behind. Needs root; skipped otherwise.
func TestNetPartitionAndCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if err := CheckRoot(); err != nil {
		t.Skip(err)
	}
	nw, err := NewNet(3)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	a, b, c := nw.Nodes[0], nw.Nodes[1], nw.Nodes[2]
	if got := reach(t, a.NS, b.IP); got != "refused" {
		t.Fatalf("n1 -> n2 before any fault: %s, want refused", got)
	}
	if err := nw.Drop(0, b.IP, true); err != nil {
		t.Fatal(err)
	}
	if got := reach(t, a.NS, b.IP); got != "silent" {
		t.Fatalf("n1 -> n2 cut both ways: %s, want silent", got)
	}
	if got := reach(t, b.NS, a.IP); got != "silent" {
		t.Fatalf("n2 -> n1 cut both ways (n1 drops what arrives): %s, want silent", got)
	}
	if got := reach(t, a.NS, c.IP); got != "refused" {
		t.Fatalf("n1 -> n3 is not cut: %s, want refused", got)
	}
	if err := nw.Heal(0); err != nil {
		t.Fatal(err)
	}
	if got := reach(t, a.NS, b.IP); got != "refused" {
		t.Fatalf("n1 -> n2 after healing: %s, want refused", got)
	}
	// One way: n3 sends nothing to n1; n1's packets still arrive at n3,
	// whose answers are lost.
	if err := nw.Drop(2, a.IP, false); err != nil {
		t.Fatal(err)
	}
	if got := reach(t, c.NS, a.IP); got != "silent" {
		t.Fatalf("n3 -> n1 cut one way: %s, want silent", got)
	}
	if got := reach(t, c.NS, b.IP); got != "refused" {
		t.Fatalf("n3 -> n2: %s, want refused", got)
	}
	if err := nw.Throttle(2, "256kbit"); err != nil {
		t.Fatal(err)
	}
	if err := nw.Heal(2); err != nil {
		t.Fatal(err)
	}

	// Leftovers of an interrupted run are found and removed by Cleanup.
	leftover, err := NewNet(1)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := Cleanup(leftover.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"netns " + leftover.Nodes[0].NS, "link " + leftover.Bridge}
	for _, w := range want {
		found := false
		for _, r := range removed {
			found = found || r == w
		}
		if !found {
			t.Errorf("Cleanup removed %v, not %s", removed, w)
		}
	}
	// ip netns del returns once the namespace is gone.
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), nsPrefix+leftover.ID) {
		t.Fatalf("namespaces left after Cleanup: %s", out)
	}

	// A run whose process was killed (SIGKILL: no cleanup of its own) is
	// removed by the next run's CleanupStale; a live run's is not.
	dead, err := NewNet(1)
	if err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ownerFile(dead.ID), []byte(strconv.Itoa(gone.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CleanupStale(); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), nsPrefix+dead.ID) {
		t.Fatalf("a dead run's namespaces are still there: %s", out)
	}
	if !strings.Contains(string(out), nw.Nodes[0].NS) {
		t.Fatalf("CleanupStale removed this live run's namespaces: %s", out)
	}
	if _, err := os.Stat(ownerFile(dead.ID)); !os.IsNotExist(err) {
		t.Fatalf("the dead run's owner file: %v", err)
	}
}
