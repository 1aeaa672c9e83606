package clustertest

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each bad start fails fast with one clear line naming the problem, exits
// non-zero, and leaves existing data untouched.
func TestBadInputFailsFast(t *testing.T) {
	c := newCluster(t)
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", c.ip(9)+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	for _, tc := range []struct {
		name string
		i    int
		args []string
		want string
	}{
		{"bind not an IP", 1, []string{"--bind", "not-an-ip"}, `--bind "not-an-ip" is not an IP address`},
		{"bad name", 1, []string{"--name", "Bad_Name"}, `--name "Bad_Name" is not a DNS label`},
		{"bad port", 1, []string{"--api-port", "70000"}, "--api-port 70000 is not in 1-65535"},
		{"same ports", 1, []string{"--api-port", "8080"}, "are both 8080"},
		{"bad join", 1, []string{"--join", "host:notaport"}, `--join: join address "host:notaport"`},
		{"unknown service", 1, []string{"--services", "hello,nope"}, `--services: unknown service "nope"`},
		{"bad log level", 1, []string{"--log-level", "loud"}, `--log-level "loud"`},
		{"snapshot count too low", 1, []string{"--raft-snapshot-count", "5"}, "--raft-snapshot-count 5 is under 10"},
		{"data dir not writable", 1, []string{"--data-dir", filepath.Join(file, "sub")}, "--data-dir " + filepath.Join(file, "sub")},
		{"port in use", 9, nil, "--gateway-port 8080: cannot listen on " + c.ip(9) + ":8080"},
		{"bad env", 1, []string{}, `HERD_GOSSIP_PORT="x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"agent", "--name", "node1", "--bind", c.ip(tc.i), "--data-dir", filepath.Join(t.TempDir(), "d")}, tc.args...)
			cmd := execHerd(args...)
			if tc.name == "bad env" {
				cmd.Env = append(os.Environ(), "HERD_GOSSIP_PORT=x")
			}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("herd %s succeeded:\n%s", strings.Join(args, " "), out)
			}
			last := lastLine(string(out))
			if !strings.HasPrefix(last, "herd: error: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("last line %q does not name the problem (%q); output:\n%s", last, tc.want, tail(string(out), 10))
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// A second node given a live node's data dir, or a live node's name, is
// refused without harming the first.
func TestDataDirAndNameTaken(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	id, err := os.ReadFile(filepath.Join(n1.DataDir, "node-id"))
	if err != nil {
		t.Fatal(err)
	}

	out, err := execHerd("agent", "--name", "other", "--bind", c.ip(2), "--data-dir", n1.DataDir).CombinedOutput()
	if err == nil || !strings.Contains(lastLine(string(out)), "in use by another herd process") {
		t.Fatalf("second process on node1's data dir: %v\n%s", err, tail(string(out), 5))
	}

	dup := c.add(2, "--join", c.ip(1), "--retry-join-timeout", "20s")
	dup.Name = "node1"
	dup.start()
	if code := dup.wait(30 * time.Second); code == 0 {
		t.Fatal("a second node1 started")
	}
	if l := lastLine(dup.logs()); !strings.Contains(l, `--name "node1": node name is taken by a live node`) {
		t.Fatalf("duplicate name: last line %q", l)
	}
	if err := n1.ready(); err != nil {
		t.Fatalf("node1 harmed by the refused starts: %v", err)
	}
	again, _ := os.ReadFile(filepath.Join(n1.DataDir, "node-id"))
	if string(again) != string(id) {
		t.Fatal("node1's identity changed")
	}
}

// Joining an address that answers but is not herd is logged as such on
// every attempt; --retry-join-timeout makes the node give up, naming each
// address and why it failed.
func TestJoinTimeoutNamesEachAddress(t *testing.T) {
	c := newCluster(t)
	web := httptest.NewUnstartedServer(http.NotFoundHandler())
	ln, err := net.Listen("tcp", c.ip(5)+":7946")
	if err != nil {
		t.Fatal(err)
	}
	web.Listener = ln
	web.Start()
	defer web.Close()

	// Without a token the node says so at once.
	bare := c.add(3, "--join", c.ip(5))
	bare.NoToken = true
	bare.start()
	if code := bare.wait(30 * time.Second); code == 0 {
		t.Fatal("node with --join and no token exited 0")
	}
	if l := lastLine(bare.logs()); !strings.Contains(l, "--join: no join token: start the node with --join-token TOKEN, HERD_JOIN_TOKEN or --join-token-file") {
		t.Fatalf("no token: last line %q", l)
	}

	tok := generateToken(t)
	n := c.add(1, "--join", c.ip(5)+","+c.ip(6), "--retry-join-timeout", "3s")
	n.Token = tok
	n.start()
	if code := n.wait(30 * time.Second); code == 0 {
		t.Fatal("node with an unreachable --join exited 0")
	}
	logs := n.logs()
	last := lastLine(logs)
	for _, want := range []string{"gave up joining after --retry-join-timeout 3s",
		c.ip(5) + ":7946: answers on TCP but is not a herd node",
		c.ip(6) + ":7946: nothing answers"} {
		if !strings.Contains(last, want) {
			t.Errorf("last line %q does not say %q", last, want)
		}
	}
	if k := strings.Count(logs, "not a herd node"); k < 3 {
		t.Errorf("the non-herd address was named on %d attempts, want one per attempt", k)
	}
	if _, err := os.Stat(filepath.Join(n.DataDir, "etcd")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(n.DataDir, "etcd"))
		if len(entries) > 0 {
			t.Errorf("a failed join left registry data behind: %v", entries)
		}
	}
	// SIGTERM on a node still joining stops it cleanly.
	m := c.add(2, "--join", c.ip(6))
	m.Token = tok
	m.start()
	waitUntil(t, 10*time.Second, "node2 retrying", func() error {
		if !strings.Contains(m.logs(), "cannot join yet") {
			return fmt.Errorf("no retry logged yet")
		}
		return nil
	})
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Fatalf("node stopped while joining exited %d", code)
	}
}
