package chaos

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	flagFaults = flag.String("chaos.faults", "", `faults to run, comma-separated: "smoke", "all" or names (kill-leader, pause-2x, isolate, split, ...); empty skips the suite`)
	flagNodes  = flag.String("chaos.nodes", "3", "node counts, comma-separated (3, 5)")
	flagSeed   = flag.Uint64("chaos.seed", 0, "seed of the first run (0: from the clock); run i uses seed+i")
	flagSeeds  = flag.Int("chaos.seeds", 1, "runs per node count, each with the next seed")
	flagHold   = flag.Duration("chaos.hold", 30*time.Second, "how long crashes and partitions last (at least 26s for the catalog-removal check)")
	flagOut    = flag.String("chaos.out", "artifacts/chaos", "directory for reports, histories and timelines")
	flagRate   = flag.Float64("chaos.gateway-rate", 50, "gateway requests per second")
)

// TestChaos runs the chaos suite when -chaos.faults is given (make chaos,
// make chaos-smoke). Each run forms a cluster of real node processes in
// their own network namespaces, runs the workloads, injects the faults one
// after another, restarts the whole cluster and checks the history.
func TestChaos(t *testing.T) {
	if *flagFaults == "" {
		t.Skip("the chaos suite runs with -chaos.faults (make chaos, make chaos-smoke)")
	}
	if err := CheckRoot(); err != nil {
		t.Fatal(err)
	}
	if *flagHold < leaseTTL+removalBound+time.Second {
		t.Fatalf("-chaos.hold %s: crashes and partitions must last at least %s for the catalog-removal check", *flagHold, leaseTTL+removalBound+time.Second)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "herd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/herd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building bin/herd: %v\n%s", err, out)
	}
	var faults []string
	shuffle := false
	switch *flagFaults {
	case "smoke":
		faults = SmokeFaults
	case "all":
		shuffle = true
	default:
		faults = strings.Split(*flagFaults, ",")
	}
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano() % 1e6)
	}
	for _, ns := range strings.Split(*flagNodes, ",") {
		var nodes int
		if _, err := fmt.Sscan(ns, &nodes); err != nil || (nodes != 3 && nodes != 5) {
			t.Fatalf("-chaos.nodes %q: each count must be 3 or 5", *flagNodes)
		}
		for i := range *flagSeeds {
			s := seed + uint64(i)
			t.Run(fmt.Sprintf("nodes=%d/seed=%d", nodes, s), func(t *testing.T) {
				out, _ := filepath.Abs(filepath.Join(*flagOut, fmt.Sprintf("%s-n%d-seed%d", time.Now().Format("20060102-150405"), nodes, s)))
				cfg := Config{
					Nodes: nodes, Seed: s, Faults: faults, Hold: *flagHold, Bin: bin, OutDir: out, Log: os.Stdout,
					Clients: 4, OpRate: 10, GatewayRate: *flagRate, Shuffle: shuffle,
				}
				t.Logf("replay with: make chaos CHAOS_FAULTS=%s CHAOS_NODES=%d CHAOS_SEED=%d", *flagFaults, nodes, s)
				r, err := Execute(cfg)
				if r != nil {
					r.Table(os.Stdout)
				}
				if err != nil {
					t.Fatalf("the run could not complete: %v (report, history, timeline and logs in %s)", err, out)
				}
				if len(r.Failures) > 0 {
					t.Fatalf("%d checks failed (report, history, timeline and logs in %s)", len(r.Failures), out)
				}
				t.Logf("report in %s", out)
			})
		}
	}
}
