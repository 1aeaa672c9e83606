package clustertest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unitCommand reads the agent command line of deploy/herd.service (the
// shipped configuration) and returns it for node n: the unit's environment
// variables become n's name, address and the cluster's join list, and its
// data dir n's temporary one. Everything else is used exactly as shipped.
func unitCommand(t testing.TB, n *node, join string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "deploy", "herd.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var line string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "ExecStart="); ok {
			line = rest
		}
	}
	if line == "" {
		t.Fatal("deploy/herd.service has no ExecStart")
	}
	fields := strings.Fields(line)
	if fields[0] != "/usr/local/bin/herd" {
		t.Fatalf("the unit runs %s, not /usr/local/bin/herd", fields[0])
	}
	vars := map[string]string{"${HERD_NAME}": n.Name, "${HERD_BIND}": n.IP, "${HERD_JOIN}": join, "/var/lib/herd": n.DataDir}
	args := make([]string, 0, len(fields)-1)
	for _, a := range fields[1:] {
		if v, ok := vars[a]; ok {
			a = v
		} else if strings.Contains(a, "$") {
			t.Fatalf("the unit's command line uses %s, which the suite does not know how to fill in", a)
		}
		args = append(args, a)
	}
	return args
}

// addFromUnit declares node i running the unit's command line.
func (c *cluster) addFromUnit(t testing.TB, i int, join string) *node {
	n := c.add(i)
	n.Command = unitCommand(t, n, join)
	return n
}

func TestUnitCommandLine(t *testing.T) {
	c := newCluster(t)
	n := c.add(1)
	got := strings.Join(unitCommand(t, n, "a,b,c"), " ")
	for _, want := range []string{"agent", "--name " + n.Name, "--bind " + n.IP, "--join a,b,c", "--bootstrap-expect 3", "--data-dir " + n.DataDir} {
		if !strings.Contains(got, want) {
			t.Errorf("unit command %q lacks %q", got, want)
		}
	}
}
