package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what a run writes as report.json.
type Report struct {
	Nodes        int           `json:"nodes"`
	Seed         uint64        `json:"seed"`
	Faults       []FaultResult `json:"faults"`
	Operations   int           `json:"operations"`
	Linearizable string        `json:"linearizable"` // yes, no, not checked
	Failures     []string      `json:"failures"`
	Windows      []Window      `json:"windows"`
	Timeline     []Event       `json:"timeline"`
}

// tally fills in each fault's operation and gateway numbers and applies
// the gateway budgets.
func (r *Run) tally() {
	var ops []Op
	if r.reg != nil {
		ops = r.reg.Ops()
	}
	var reqs []Request
	if r.traffic != nil {
		reqs = r.traffic.Requests()
	}
	for i := range r.Results {
		res := &r.Results[i]
		next := Infinity
		if i+1 < len(r.Results) {
			next = r.Results[i+1].inject
		}
		res.InjectS, res.HealS, res.HealthyS = res.inject.Seconds(), res.heal.Seconds(), res.healthy.Seconds()
		res.TimeToHeal = (res.healthy - res.heal).Seconds()
		for _, op := range ops {
			if op.Call >= res.inject && op.Call < res.healthy {
				res.Ops++
				if op.Status == Unknown {
					res.OpErrors++
				}
			}
		}
		var lat []time.Duration
		for _, q := range reqs {
			switch {
			case r.hitWhileInFlight(q):
				// Its own gateway's node was faulted while it was out: no
				// gateway could have answered it.
			case q.At >= res.inject && q.At < res.healthy:
				res.GwRequests++
				lat = append(lat, q.Latency)
				if q.Failed() {
					res.GwErrors++
				}
			case q.At >= res.healthy && q.At < next && q.Failed():
				res.GwErrAfter++
			}
		}
		res.P99MS = float64(percentile(lat, 0.99)) / float64(time.Millisecond)
		if res.Budget >= 0 && (res.GwErrors > res.Budget || res.GwErrAfter > res.Budget) {
			msg := fmt.Sprintf("%s: %d gateway errors during the fault and %d after it, budget %d", res.Fault, res.GwErrors, res.GwErrAfter, res.Budget)
			res.Problems = append(res.Problems, msg)
			r.fail("%s", msg)
		}
	}
}

// hitWhileInFlight reports whether a fault hit the node whose gateway the
// request went to while it was in flight (chosen just before the harness
// stopped sending to that node).
func (r *Run) hitWhileInFlight(q Request) bool {
	for _, res := range r.Results {
		// Clients stop choosing a target when the fault starts, so any
		// request through it that was out at the fault or started during
		// it was chosen an instant before.
		if contains(res.Targets, q.Via) && q.At+q.Latency >= res.inject && q.At <= res.healthy {
			return true
		}
	}
	return false
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// Table writes the run's table.
func (r *Run) Table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "nodes\tseed\tfault\ttargets\tops\top errors\tgw reqs\tgw errors\terrors after\tp99 ms\tlost\theal s\t\n")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.0f\t%d\t%.1f\t\n",
			r.Cfg.Nodes, r.Cfg.Seed, res.Fault, strings.Join(res.Targets, ","), res.Ops, res.OpErrors,
			res.GwRequests, res.GwErrors, res.GwErrAfter, res.P99MS, len(res.Lost), res.TimeToHeal)
	}
	tw.Flush()
	lin := r.linearizable
	if lin == "" {
		lin = "not checked (the run stopped)"
	}
	n := 0
	if r.reg != nil {
		n = len(r.reg.Ops())
	}
	fmt.Fprintf(w, "registry operations %d, linearizable %s, check failures %d\n", n, lin, len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintf(w, "  FAIL %s\n", f)
	}
}

// save writes report.json, history.json (the registry operations),
// requests.json (the gateway requests) and table.txt into the out dir.
func (r *Run) save() {
	r.tally()
	rep := Report{
		Nodes: r.Cfg.Nodes, Seed: r.Cfg.Seed, Faults: r.Results, Linearizable: r.linearizable,
		Failures: r.Failures, Timeline: r.TL.Events(),
	}
	for _, w := range r.windows {
		w.FromS, w.ToS = w.From.Seconds(), w.To.Seconds()
		if w.To == Infinity {
			w.ToS = -1
		}
		rep.Windows = append(rep.Windows, w)
	}
	if r.reg != nil {
		ops := r.reg.Ops()
		rep.Operations = len(ops)
		writeJSON(filepath.Join(r.Cfg.OutDir, "history.json"), ops)
	}
	if r.traffic != nil {
		writeJSON(filepath.Join(r.Cfg.OutDir, "requests.json"), r.traffic.Requests())
	}
	writeJSON(filepath.Join(r.Cfg.OutDir, "report.json"), rep)
	r.mu.Lock()
	writeJSON(filepath.Join(r.Cfg.OutDir, "catalog-reads.json"), r.polls)
	r.mu.Unlock()
	if f, err := os.Create(filepath.Join(r.Cfg.OutDir, "table.txt")); err == nil {
		r.Table(f)
		f.Close()
	}
}

func writeJSON(path string, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err == nil {
		_ = os.WriteFile(path, b, 0o644)
	}
}
