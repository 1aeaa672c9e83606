package clustertest

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `make cluster`'s script, on a terminal as users run it: three nodes on
// 127.0.0.1-3 with security on, the hello service through each gateway,
// and a Ctrl-C (SIGINT to the terminal's foreground process group) stops
// them all gracefully with exit status 0.
func TestMakeClusterScript(t *testing.T) {
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		t.Skip("no script(1) to give the cluster script a terminal")
	}
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		for _, port := range []string{"7946", "2379", "2380", "8080", "8500", "9000"} {
			if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, port), 200*time.Millisecond); err == nil {
				c.Close()
				t.Skipf("%s:%s is in use (a `make cluster` running?): the script needs those ports", ip, port)
			}
		}
	}
	root, _ := filepath.Abs("..")
	dir := t.TempDir()
	logFile := filepath.Join(dir, "terminal.log")
	cmd := exec.Command(scriptBin, "-qefc", filepath.Join(root, "scripts", "cluster.sh"), logFile)
	cmd.Env = append(os.Environ(), "HERD_CLUSTER_DATA="+filepath.Join(dir, "data"), "HERD_CLUSTER_BIN="+herdBin)
	cmd.Dir = root
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("terminal:\n%s", tail(string(b), 60))
		}
	})
	terminal := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	waitUntil(t, 60*time.Second, "the script saying the cluster is up", func() error {
		if !strings.Contains(terminal(), "export HERD_CA_FILE=") {
			return errNotYet
		}
		return nil
	})
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		waitUntil(t, 30*time.Second, "hello through "+ip, func() error {
			_, err := helloFrom("http://" + ip + ":8080")
			return err
		})
	}
	// The lines it prints to export work for the CLI and for curl.
	out := terminal()
	ca := exportedValue(t, out, "HERD_CA_FILE")
	tokFile := strings.TrimSuffix(strings.TrimPrefix(exportedValue(t, out, "HERD_TOKEN"), "$(cat "), ")")
	tok, err := os.ReadFile(tokFile)
	if err != nil {
		t.Fatalf("the HERD_TOKEN line names %q: %v", tokFile, err)
	}
	cli := exec.Command(herdBin, "members", "--api", "https://127.0.0.1:8500")
	cli.Dir = t.TempDir() // no ./data to find a certificate in
	cli.Env = append(os.Environ(), "HERD_CA_FILE="+ca, "HERD_TOKEN="+strings.TrimSpace(string(tok)))
	if b, err := cli.CombinedOutput(); err != nil || strings.Count(string(b), "alive") != 3 {
		t.Fatalf("herd members with the exported lines: %v\n%s", err, b)
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		b, err := exec.Command(curl, "-fsS", "--cacert", ca, "-H", "Authorization: Bearer "+strings.TrimSpace(string(tok)), "https://127.0.0.1:8500/v1/members").CombinedOutput()
		if err != nil || !strings.Contains(string(b), `"node3"`) {
			t.Fatalf("curl with the exported lines: %v\n%s", err, b)
		}
	}
	// The terminal's foreground process group: the script's own.
	pgid := foregroundGroup(t, cmd.Process.Pid)
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("after Ctrl-C the script exited with %v, want 0", waitErr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the script did not stop within 60s of Ctrl-C")
	}
	out = terminal()
	if n := strings.Count(out, "herd node stopped"); n != 3 {
		t.Fatalf("%d nodes said they stopped, want 3", n)
	}
	if strings.Contains(out, "Error 141") || strings.Contains(out, "forcing stop") {
		t.Fatalf("the stop was not clean:\n%s", tail(out, 20))
	}
}

// exportedValue is the value of the `export NAME=value` line in out.
func exportedValue(t *testing.T, out, name string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "export "+name+"="); ok {
			v, _, _ = strings.Cut(v, "#")
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("the script printed no `export %s=` line", name)
	return ""
}

// foregroundGroup is the foreground process group of the terminal that
// the children of pid (script(1)) run on.
func foregroundGroup(t *testing.T, pid int) int {
	t.Helper()
	var tpgid int
	waitUntil(t, 10*time.Second, "the cluster script owning its terminal", func() error {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// pid (comm) state ppid pgrp session tty_nr tpgid ...
			s := string(stat)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			if len(f) < 5 || f[1] != strconv.Itoa(pid) {
				continue
			}
			if tp, _ := strconv.Atoi(f[5]); tp > 0 && p > 0 {
				tpgid = tp
				return nil
			}
		}
		return errNotYet
	})
	return tpgid
}

var errNotYet = errors.New("not yet")
