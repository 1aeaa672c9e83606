// Command checkload measures the cost of health checks on one real node,
// for `make bench-checks`. It serves the health endpoints itself and
// registers -count instances of service chk through the node's batch API,
// then, for one window each:
//
//   - nochecks: the instances without checks (the baseline);
//   - steady: each with an http check every -interval, all passing;
//   - failing: a tenth of the endpoints answer 500 for the window;
//   - recovering: they answer 200 again.
//
// In each window it reads the node's CPU time (/proc/<pid>/stat), the
// registry revision (every write moves it: lease keepalives do not) and
// the node's check counters, and prints one JSON object per window. For
// the gateway rounds of bench/checks.sh, -mode serve only serves the
// endpoints and -mode toggle only registers the instances with (-checks)
// or without checks.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/bench/internal/apiclient"
)

var (
	flagAPI      = flag.String("api", "", "agent API URL of the node")
	flagCA       = flag.String("ca", "", "cluster CA file")
	flagToken    = flag.String("token", "", "API token file")
	flagListen   = flag.String("listen", "127.0.0.1:0", "address the health endpoints are served on")
	flagPID      = flag.Int("pid", 0, "the node's process ID (CPU time)")
	flagCount    = flag.Int("count", 1000, "instances, one check each")
	flagInterval = flag.Duration("interval", 10*time.Second, "the checks' interval")
	flagWindow   = flag.Duration("window", 60*time.Second, "length of each measured window")
	flagMode     = flag.String("mode", "measure", "measure: the four windows; serve: serve the health endpoints on -listen until killed; toggle: register the instances at -listen with -checks or without, and exit")
	flagChecks   = flag.Bool("checks", true, "toggle: register the instances with checks")
)

// failing marks the endpoints that answer 500.
var failing []atomic.Bool

// served counts the health requests answered.
var served atomic.Int64

func main() {
	flag.Parse()
	log.SetFlags(0)
	failing = make([]atomic.Bool, *flagCount)
	switch *flagMode {
	case "serve":
		log.Fatal(http.ListenAndServe(*flagListen, http.HandlerFunc(health)))
	case "toggle":
		addr, err := net.ResolveTCPAddr("tcp", *flagListen)
		if err != nil {
			log.Fatal(err)
		}
		register(apiClient(), addr, *flagChecks)
	case "measure":
		ln, err := net.Listen("tcp", *flagListen)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(ln, http.HandlerFunc(health)) //nolint:errcheck // until exit
		measure(apiClient(), ln.Addr().(*net.TCPAddr))
	default:
		log.Fatalf("-mode %q: want measure, serve or toggle", *flagMode)
	}
}

func health(w http.ResponseWriter, r *http.Request) {
	served.Add(1)
	i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/h/"))
	if err != nil || i < 0 || i >= len(failing) {
		http.NotFound(w, r)
		return
	}
	if failing[i].Load() {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func measure(hc *http.Client, addr *net.TCPAddr) {
	register(hc, addr, false)
	window(hc, "nochecks")
	register(hc, addr, true)
	waitRuns(hc)
	window(hc, "steady")
	for i := 0; i < len(failing); i += 10 {
		failing[i].Store(true)
	}
	window(hc, "failing")
	for i := range failing {
		failing[i].Store(false)
	}
	window(hc, "recovering")
}

// waitRuns waits until every check has run once (the first run lands
// within 500 ms of its registration).
func waitRuns(hc *http.Client) {
	deadline := time.Now().Add(30 * time.Second)
	for served.Load() < int64(*flagCount) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
}

// window measures one window.
func window(hc *http.Client, phase string) {
	cpu0, rev0, runs0, tr0, served0 := cpuSeconds(), revision(hc), metric(hc, "herd_check_runs_total"), metric(hc, "herd_check_transitions_total"), served.Load()
	start := time.Now()
	time.Sleep(*flagWindow)
	secs := time.Since(start).Seconds()
	cpu, rev, runs, tr := cpuSeconds()-cpu0, revision(hc)-rev0, metric(hc, "herd_check_runs_total")-runs0, metric(hc, "herd_check_transitions_total")-tr0
	out, _ := json.Marshal(map[string]any{
		"measure": "checks", "phase": phase, "instances": *flagCount, "interval_s": flagInterval.Seconds(), "window_s": secs,
		"cpu_cores":               cpu / secs,
		"registry_writes_per_min": float64(rev) * 60 / secs,
		"check_runs_per_min":      runs * 60 / secs,
		"transitions_per_min":     tr * 60 / secs,
		"probes_served_per_min":   float64(served.Load()-served0) * 60 / secs,
		"passing":                 metric(hc, `herd_checks{status="passing"}`),
		"critical":                metric(hc, `herd_checks{status="critical"}`),
	})
	fmt.Println(string(out))
}

// register (re)registers the instances through POST /v1/instances, 128 at
// a time, with or without their check.
func register(hc *http.Client, addr *net.TCPAddr, checks bool) {
	for from := 0; from < *flagCount; from += registry128 {
		var req api.BatchRequest
		for i := from; i < min(from+registry128, *flagCount); i++ {
			b := api.BatchRegistration{Service: "chk", ID: "c" + strconv.Itoa(i)}
			b.Address, b.Port = addr.IP.String(), addr.Port
			if checks {
				b.Checks = []api.Check{{Type: api.CheckHTTP, Path: "/h/" + strconv.Itoa(i), Interval: api.Duration(*flagInterval),
					Timeout: api.Duration(2 * time.Second), Status: api.HealthPassing}}
			}
			req.Register = append(req.Register, b)
		}
		body, _ := json.Marshal(req)
		resp, err := hc.Post(*flagAPI+"/v1/instances", "application/json", bytes.NewReader(body))
		if err != nil {
			log.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			log.Fatalf("POST /v1/instances: %d %s", resp.StatusCode, b)
		}
	}
}

// registry128 is the batch API's limit.
const registry128 = 128

// revision is the registry revision, from a consistent read.
func revision(hc *http.Client) int64 {
	var r api.ServiceResponse
	getJSON(hc, "/v1/services/chk?consistent", &r)
	return r.Revision
}

// metric reads one sample of the node's /metrics (0 when absent).
func metric(hc *http.Client, name string) float64 {
	resp, err := hc.Get(*flagAPI + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func getJSON(hc *http.Client, path string, out any) {
	resp, err := hc.Get(*flagAPI + path)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		log.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		log.Fatal(err)
	}
}

// cpuSeconds is the node's user and system CPU time.
func cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", *flagPID))
	if err != nil {
		log.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) in parens.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

func apiClient() *http.Client {
	hc, err := apiclient.New(*flagCA, *flagToken)
	if err != nil {
		log.Fatal(err)
	}
	return hc
}
