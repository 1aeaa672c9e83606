// Command regload measures herd's registry from the outside, for `make
// bench-registry`: registrations per second through the agent API against
// raw etcd puts with a lease on the same cluster (1 and 16 clients, in
// alternating rounds), then the time to register many instances, until a
// far node's catalog holds them all, and the gateway's latency. It prints
// one JSON object per measurement on stdout.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/bench/internal/apiclient"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	flagAPI      = flag.String("api", "", "agent API URL of the node that takes the writes")
	flagFar      = flag.String("far", "", "agent API URL of the node whose catalog is watched")
	flagGateway  = flag.String("gateway", "", "gateway URL for the latency probe")
	flagEtcd     = flag.String("etcd", "", "etcd client URL of the same node (raw baseline)")
	flagCA       = flag.String("ca", "", "cluster CA file")
	flagCert     = flag.String("cert", "", "client certificate (herd tls cert create --client)")
	flagKey      = flag.String("key", "", "its key")
	flagToken    = flag.String("token", "", "API token file")
	flagMode     = flag.String("mode", "rate", "rate: API vs raw etcd; bulk: register -count instances; latency: gateway p50/p99; count: instances in -far's catalog")
	flagRounds   = flag.Int("rounds", 3, "rate: alternating rounds")
	flagDuration = flag.Duration("duration", 5*time.Second, "rate: length of one measurement")
	flagCount    = flag.Int("count", 10000, "bulk: instances to register")
	flagServices = flag.Int("services", 200, "bulk: across this many services")
	flagPrefix   = flag.String("prefix", "bulk", "bulk and count: service name prefix")
	flagGateways = flag.String("gateways", "", "reach: comma-separated gateway URLs")
	flagNodes    = flag.Int("nodes", 0, "reach, formation: how many nodes' hello each gateway must reach")
	flagAPIs     = flag.String("apis", "", "formation: comma-separated agent API URLs, node1's first")
	flagVoters   = flag.Int("voters", 5, "formation: the voters to wait for")
	flagStart    = flag.Int64("start", 0, "formation: when the nodes were started (Unix ns)")
	flagFars     = flag.String("fars", "", "visibility: comma-separated agent API URLs of the other nodes")
	flagLoad     = flag.Int("load", 16, "visibility: clients registering meanwhile")
	flagProbes   = flag.Int("probes", 200, "visibility: registrations timed")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	hc := apiClient()
	switch *flagMode {
	case "rate":
		rate(hc)
	case "bulk":
		bulk(hc)
	case "latency":
		latency()
	case "count":
		fmt.Println(count(hc, *flagFar))
	case "reach":
		reach()
	case "formation":
		formation(hc)
	case "visibility":
		visibility(hc)
	default:
		log.Fatalf("-mode %q: want rate, bulk, latency or count", *flagMode)
	}
}

func tlsConfig(withCert bool) *tls.Config {
	pool, err := apiclient.Pool(*flagCA)
	if err != nil {
		log.Fatal(err)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if withCert {
		c, err := tls.LoadX509KeyPair(*flagCert, *flagKey)
		if err != nil {
			log.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc
}

func apiClient() *http.Client {
	hc, err := apiclient.New(*flagCA, *flagToken)
	if err != nil {
		log.Fatal(err)
	}
	return hc
}

// run calls op from clients goroutines for d and returns the rate.
func run(clients int, d time.Duration, op func(client, i int) error) float64 {
	var done atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				if err := op(c, i); err != nil {
					log.Fatal(err)
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds()
}

func register(hc *http.Client, service, id string) error {
	body := `{"address":"127.0.0.1","port":9}`
	req, _ := http.NewRequest(http.MethodPut, *flagAPI+"/v1/services/"+service+"/instances/"+id, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return expectOK(hc.Do(req))
}

func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// rate: API registrations against raw etcd puts with a lease, 1 and 16
// clients, alternating; each writes over the same 64 keys per client, so
// the registry's size stays put.
func rate(hc *http.Client) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*flagEtcd}, TLS: tlsConfig(true), DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		log.Fatal(err)
	}
	val, _ := json.Marshal(api.Instance{ID: "x", Service: "raw", Node: "bench", Address: "127.0.0.1", Port: 9})
	raw := func(c, i int) error {
		_, err := cli.Put(ctx, fmt.Sprintf("/bench/raw/c%d-%d", c, i%64), string(val), clientv3.WithLease(lease.ID))
		return err
	}
	viaAPI := func(c, i int) error { return register(hc, "rate", fmt.Sprintf("c%d-%d", c, i%64)) }
	for r := range *flagRounds {
		for _, clients := range []int{1, 16} {
			order := []string{"raw", "api"}
			if r%2 == 1 {
				order = []string{"api", "raw"}
			}
			for _, what := range order {
				op := raw
				if what == "api" {
					op = viaAPI
				}
				emit(map[string]any{"measure": "rate", "what": what, "clients": clients, "round": r, "per_s": run(clients, *flagDuration, op)})
			}
		}
	}
}

// bulk registers -count instances across -services services with 16
// clients, and reports the time it took.
func bulk(hc *http.Client) {
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *flagCount {
					return
				}
				if err := register(hc, fmt.Sprintf("%s-%03d", *flagPrefix, i%*flagServices), fmt.Sprintf("i%05d", i)); err != nil {
					log.Fatal(err)
				}
			}
		})
	}
	wg.Wait()
	emit(map[string]any{"measure": "bulk", "count": *flagCount, "services": *flagServices, "seconds": time.Since(start).Seconds()})
}

// count is how many instances of the -prefix services the catalog of the
// node at u holds.
func count(hc *http.Client, u string) int {
	var sr api.ServicesResponse
	if !getJSON(hc, u+"/v1/services", &sr) {
		return -1
	}
	n := 0
	for _, s := range sr.Services {
		if strings.HasPrefix(s.Name, *flagPrefix+"-") {
			n += s.Instances
		}
	}
	return n
}

// latency: 3000 GETs of hello through the gateway, one at a time; p50 and
// p99.
func latency() {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	var ds []time.Duration
	for i := range 3200 {
		t := time.Now()
		resp, err := hc.Get(*flagGateway + "/hello/")
		if err != nil {
			log.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			log.Fatalf("GET /hello/: %d", resp.StatusCode)
		}
		if i >= 200 { // warm-up
			ds = append(ds, time.Since(t))
		}
	}
	slices.Sort(ds)
	emit(map[string]any{"measure": "latency", "p50_ms": ms(ds[len(ds)/2]), "p99_ms": ms(ds[len(ds)*99/100])})
}

// reach: how long until every gateway has routed GET /hello/ to the hello
// instance of every one of -nodes nodes (the slowest gateway's time).
func reach() {
	gws := strings.Split(*flagGateways, ",")
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, gw := range gws {
		wg.Go(func() {
			hc := &http.Client{Timeout: 2 * time.Second}
			seen := map[string]bool{}
			for len(seen) < *flagNodes {
				if time.Since(start) > 120*time.Second {
					log.Printf("%s reached %d of %d nodes in 120s", gw, len(seen), *flagNodes)
					failed.Store(true)
					return
				}
				resp, err := hc.Get(gw + "/hello/")
				if err != nil {
					<-time.After(50 * time.Millisecond) // not up yet
					continue
				}
				var body struct{ Node string }
				_ = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if resp.StatusCode == 200 && body.Node != "" {
					seen[body.Node] = true
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		os.Exit(1)
	}
	emit(map[string]any{"measure": "reach", "gateways": len(gws), "nodes": *flagNodes, "seconds": time.Since(start).Seconds()})
}

// formation: from -start (when the nodes were started), the first time
// each of these holds, polled concurrently (each at most every 100 ms):
// every node ready, -voters voters, every node's gossip sees every node
// alive, and every gateway has routed to the hello of every node.
func formation(hc *http.Client) {
	apis := strings.Split(*flagAPIs, ",")
	gws := strings.Split(*flagGateways, ",")
	start := time.Unix(0, *flagStart)
	poll := func(what string, cond func() bool) float64 {
		for !cond() {
			if time.Since(start) > 300*time.Second {
				log.Fatalf("formation: %s not within 300s", what)
			}
			<-time.After(100 * time.Millisecond)
		}
		return time.Since(start).Seconds()
	}
	members := func(u string) *api.MembersResponse {
		var m api.MembersResponse
		if !getJSON(hc, u+"/v1/members", &m) {
			return nil
		}
		return &m
	}
	// every polls cond for each of urls at once and returns when all hold.
	every := func(what string, urls []string, cond func(u string) bool) float64 {
		var wg sync.WaitGroup
		for _, u := range urls {
			wg.Go(func() { poll(what+" "+u, func() bool { return cond(u) }) })
		}
		wg.Wait()
		return time.Since(start).Seconds()
	}
	var ready, voters, gossip, routed float64
	var wg sync.WaitGroup
	wg.Go(func() {
		ready = every("ready", apis, func(u string) bool {
			resp, err := hc.Get(u + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	})
	wg.Go(func() {
		voters = poll("voters", func() bool {
			m := members(apis[0])
			k := 0
			for _, x := range membersOf(m) {
				if x.Role == api.RoleVoter && x.Status == "alive" {
					k++
				}
			}
			return k == *flagVoters
		})
	})
	wg.Go(func() {
		gossip = every("gossip", apis, func(u string) bool {
			k := 0
			for _, x := range membersOf(members(u)) {
				if x.Status == "alive" {
					k++
				}
			}
			return k == len(apis)
		})
	})
	wg.Go(func() {
		seen := map[string]map[string]bool{}
		for _, gw := range gws {
			seen[gw] = map[string]bool{}
		}
		routed = every("routing", gws, func(gw string) bool { return reaches(gw, *flagNodes, seen[gw]) })
	})
	wg.Wait()
	emit(map[string]any{"measure": "formation", "nodes": len(apis), "all_ready_s": ready, "voters_s": voters, "voters": *flagVoters,
		"gossip_converged_s": gossip, "every_gateway_every_node_s": routed})
}

// reaches asks gw for hello 2n times, adding the nodes that answered to
// seen, and reports whether seen holds n nodes.
func reaches(gw string, n int, seen map[string]bool) bool {
	hc := &http.Client{Timeout: 2 * time.Second}
	for range 2 * n {
		if len(seen) == n {
			return true
		}
		resp, err := hc.Get(gw + "/hello/")
		if err != nil {
			return false
		}
		var body struct{ Node string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode == 200 && body.Node != "" {
			seen[body.Node] = true
		}
	}
	return len(seen) == n
}

// visibility: while -load clients register through -api (the rate
// phase's keys), -probes registrations of one probe instance, each with a
// new port, one at a time: how long each PUT took, and the time from its
// answer until every node of -fars lists it with that port in its catalog
// (polled every millisecond).
func visibility(hc *http.Client) {
	fars := strings.Split(*flagFars, ",")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range *flagLoad {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := register(hc, "rate", fmt.Sprintf("c%d-%d", c, i%64)); err != nil {
					log.Fatal(err)
				}
			}
		})
	}
	seen := func(u string, port int) bool {
		var sr api.ServiceResponse
		return getJSON(hc, u+"/v1/services/probe", &sr) && len(sr.Instances) == 1 && sr.Instances[0].Port == port
	}
	var ds, puts []time.Duration
	for i := range *flagProbes {
		port := 10000 + i
		sent := time.Now()
		req, _ := http.NewRequest(http.MethodPut, *flagAPI+"/v1/services/probe/instances/p1", strings.NewReader(fmt.Sprintf(`{"address":"127.0.0.1","port":%d}`, port)))
		req.Header.Set("Content-Type", "application/json")
		if err := expectOK(hc.Do(req)); err != nil {
			log.Fatal(err)
		}
		t := time.Now()
		puts = append(puts, t.Sub(sent))
		for _, u := range fars {
			for !seen(u, port) {
				if time.Since(t) > 10*time.Second {
					log.Fatalf("probe %d not in %s's catalog after 10s", i, u)
				}
				<-time.After(time.Millisecond)
			}
		}
		ds = append(ds, time.Since(t))
	}
	close(stop)
	wg.Wait()
	slices.Sort(ds)
	slices.Sort(puts)
	emit(map[string]any{"measure": "visibility", "load_clients": *flagLoad, "nodes": len(fars), "probes": len(ds),
		"p50_ms": ms(ds[len(ds)/2]), "p99_ms": ms(ds[len(ds)*99/100]),
		"put_p50_ms": ms(puts[len(puts)/2]), "put_p99_ms": ms(puts[len(puts)*99/100])})
}

func expectOK(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, b)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func membersOf(m *api.MembersResponse) []api.Member {
	if m == nil {
		return nil
	}
	return m.Members
}

// getJSON GETs u and decodes a 200 answer into v; false for anything else.
func getJSON(hc *http.Client, u string, v any) bool {
	resp, err := hc.Get(u)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(v) == nil
}
