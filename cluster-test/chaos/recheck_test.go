package chaos

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

var flagRecheck = flag.String("chaos.recheck", "", "a run's artifact directory: check its saved registry history again (linearizability only)")

// TestRecheck runs the linearizability check on a saved run again, e.g.
// after changing the model: go test -run TestRecheck ./cluster-test/chaos/
// -args -chaos.recheck <dir>. It writes linearizability.html there when the
// history is not linearizable.
func TestRecheck(t *testing.T) {
	if *flagRecheck == "" {
		t.Skip("give -chaos.recheck <artifact dir>")
	}
	var ops []Op
	readJSON(t, filepath.Join(*flagRecheck, "history.json"), &ops)
	var rep Report
	readJSON(t, filepath.Join(*flagRecheck, "report.json"), &rep)
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	for i := range ops {
		ops[i].Call, ops[i].Return = sec(ops[i].CallS), sec(ops[i].ReturnS)
	}
	for i := range rep.Windows {
		w := &rep.Windows[i]
		w.From, w.To = sec(w.FromS), sec(w.ToS)
		if w.ToS < 0 {
			w.To = Infinity
		}
	}
	keys := keysOf(ops)
	h := History(ops, keys, rep.Windows)
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(Model(), h, 5*time.Minute)
	t.Logf("%d operations on %d keys: %v in %s", len(h), len(keys), res, time.Since(start).Round(time.Millisecond))
	if res == porcupine.Illegal {
		path := filepath.Join(*flagRecheck, "linearizability.html")
		_ = porcupine.VisualizePath(Model(), info, path)
		t.Fatalf("not linearizable: see %s", path)
	}
	if res != porcupine.Ok {
		t.Fatal("the check did not finish")
	}
}

// keysOf rebuilds the key space from a history: IDs are "<owner>-k<j>".
func keysOf(ops []Op) []Key {
	seen := map[string]bool{}
	var keys []Key
	add := func(k string) {
		svc, id, ok := strings.Cut(k, "/")
		if !ok || seen[k] {
			return
		}
		seen[k] = true
		owner, _, _ := strings.Cut(id, "-k")
		keys = append(keys, Key{Service: svc, ID: id, Owner: owner})
	}
	for _, op := range ops {
		if op.Kind == OpList {
			for k := range op.Got {
				add(k)
			}
			continue
		}
		add(op.Key)
	}
	return keys
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
