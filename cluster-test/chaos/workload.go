package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"
)

// OpList reads a whole service; History splits it into one get per key.
const OpList = "list"

// Key is one instance key of the registry workload. Every key has one
// owner node, the only node through which it is registered or deregistered
// (an instance belongs to the node that registered it).
type Key struct {
	Service, ID, Owner string
}

func (k Key) String() string { return k.Service + "/" + k.ID }

// Op is one recorded registry operation, with its invoke and return times
// on the timeline's clock.
type Op struct {
	Client       int               `json:"client"`
	Kind         string            `json:"kind"`
	Key          string            `json:"key"` // service/id, or the service for a list
	Value        string            `json:"value,omitempty"`
	Via          string            `json:"via"` // the node whose API was asked
	Call, Return time.Duration     `json:"-"`
	CallS        float64           `json:"call_s"`
	ReturnS      float64           `json:"return_s"`
	Status       string            `json:"status"`
	Got          map[string]string `json:"got,omitempty"` // key -> value read
	Err          string            `json:"err,omitempty"`
}

// Services of the registry workload.
var workloadServices = []string{"chaos-a", "chaos-b"}

// Keys returns the workload's key space: per node and service, perNode
// instance IDs "<node>-k<j>".
func Keys(nodes []*Node, perNode int) []Key {
	var keys []Key
	for _, s := range workloadServices {
		for _, n := range nodes {
			for j := range perNode {
				keys = append(keys, Key{Service: s, ID: fmt.Sprintf("%s-k%d", n.Name, j), Owner: n.Name})
			}
		}
	}
	return keys
}

// Registry is the registry workload: clients doing register, deregister,
// consistent get and consistent list through the agent APIs.
type Registry struct {
	c       *Cluster
	keys    []Key
	tl      *Timeline
	clients int
	rate    float64 // operations per second per client
	seed    uint64

	// gate lets the harness stop the clients (write lock) around checks.
	gate sync.RWMutex
	mu   sync.Mutex
	ops  []Op
	seq  int
}

// NewRegistry prepares the workload; Run runs it.
func NewRegistry(c *Cluster, keys []Key, clients int, rate float64, seed uint64) *Registry {
	return &Registry{c: c, keys: keys, tl: c.TL, clients: clients, rate: rate, seed: seed}
}

// opClient: a write may take the registry's 5s request timeout to fail.
var opClient = &http.Client{Timeout: 8 * time.Second, Transport: apiTransport(workload)}

// opControl is opClient with the management token (a graceful leave).
var opControl = &http.Client{Timeout: 8 * time.Second, Transport: apiTransport(managementToken)}

// Run runs the clients until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(r.seed, uint64(i)))
			tick := time.NewTicker(time.Duration(float64(time.Second) / r.rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				r.gate.RLock()
				r.one(ctx, i, rng)
				r.gate.RUnlock()
			}
		}()
	}
	wg.Wait()
}

// Pause stops the clients once their operations in flight are done; the
// returned function resumes them.
func (r *Registry) Pause() (resume func()) {
	r.gate.Lock()
	return r.gate.Unlock
}

// Ops returns the history so far.
func (r *Registry) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

func (r *Registry) one(ctx context.Context, client int, rng *rand.Rand) {
	k := r.keys[rng.IntN(len(r.keys))]
	owner := r.c.Node(k.Owner)
	reader := r.c.nodes[rng.IntN(len(r.c.nodes))]
	op := Op{Client: client}
	p := rng.Float64()
	switch {
	case p < 0.45:
		r.mu.Lock()
		r.seq++
		op.Value = fmt.Sprintf("v%d", r.seq)
		r.mu.Unlock()
		op.Kind, op.Key, op.Via = OpRegister, k.String(), owner.Name
	case p < 0.55:
		op.Kind, op.Key, op.Via = OpDeregister, k.String(), owner.Name
	case p < 0.8:
		op.Kind, op.Key, op.Via = OpGet, k.String(), reader.Name
	default:
		op.Kind, op.Key, op.Via = OpList, k.Service, reader.Name
	}
	via := r.c.Node(op.Via)
	op.Call = r.tl.Now()
	sent := true
	switch op.Kind {
	case OpRegister:
		body, _ := json.Marshal(api.RegisterRequest{Address: owner.IP, Port: 9, Meta: map[string]string{"v": op.Value}, Checks: instanceChecks()})
		code, e, err := send(ctx, opClient, http.MethodPut, via.API()+instancePath(op.Key), body)
		op.Status, sent = outcome(code, e, err, false)
		op.Err = describe(code, e, err)
	case OpDeregister:
		code, e, err := send(ctx, opClient, http.MethodDelete, via.API()+instancePath(op.Key), nil)
		op.Status, sent = outcome(code, e, err, true)
		op.Err = describe(code, e, err)
	case OpGet, OpList:
		op.Got = map[string]string{}
		path := "/v1/services/" + op.Key + "?consistent"
		if op.Kind == OpGet {
			path = instancePath(op.Key) + "?consistent"
		}
		code, body, err := read(ctx, via.API()+path)
		if errors.Is(err, syscall.ECONNREFUSED) {
			sent = false
		}
		switch {
		case err != nil || (code != 200 && code != 404):
			op.Status = Unknown
			op.Err = fmt.Sprintf("%d %v", code, err)
		case code == 404:
			op.Status = Ok
		case op.Kind == OpGet:
			var ir api.InstanceResponse
			if err := json.Unmarshal(body, &ir); err != nil {
				op.Status, op.Err = Unknown, err.Error()
				break
			}
			op.Status = Ok
			op.Got[op.Key] = ir.Instance.Meta["v"]
		default:
			var sr api.ServiceResponse
			if err := json.Unmarshal(body, &sr); err != nil {
				op.Status, op.Err = Unknown, err.Error()
				break
			}
			op.Status = Ok
			for _, in := range sr.Instances {
				op.Got[in.Service+"/"+in.ID] = in.Meta["v"]
			}
		}
	}
	op.Return = r.tl.Now()
	if !sent || ctx.Err() != nil && op.Status == Unknown {
		return // never reached the node, or cut short by the end of the run
	}
	op.CallS, op.ReturnS = op.Call.Seconds(), op.Return.Seconds()
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// instanceChecks are the checks of every instance the suite registers: an
// http check of the owner's hello service, so that the check runners and
// their status writes work through every fault.
func instanceChecks() []api.Check {
	return []api.Check{{Name: "owner-hello", Type: api.CheckHTTP, Path: "/hello", Port: servicePort,
		Interval: api.Duration(2 * time.Second), Timeout: api.Duration(time.Second)}}
}

// servicePort is the nodes' --service-port (the default).
const servicePort = 9000

// send does a write and decodes an error body.
func send(ctx context.Context, hc *http.Client, method, url string, body []byte) (int, api.Error, error) {
	var e api.Error
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, e, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, e, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		_ = json.Unmarshal(b, &e)
	}
	return resp.StatusCode, e, nil
}

func read(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := opClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// instancePath is the agent API path of the instance key service/id.
func instancePath(key string) string {
	svc, id, _ := strings.Cut(key, "/")
	return "/v1/services/" + svc + "/instances/" + id
}

// describe says what a write answered, when it was not a plain 200.
func describe(code int, e api.Error, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case code != 200:
		return fmt.Sprintf("%d %s: %s", code, e.Reason, e.Error)
	}
	return ""
}

// outcome classifies a write's answer. sent is false when the request
// never reached a node (connection refused: the process is down).
func outcome(code int, e api.Error, err error, deregister bool) (status string, sent bool) {
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return Refused, false
		}
		return Unknown, true
	}
	switch {
	case code == 200:
		return Ok, true
	case code == 404 && deregister && e.Reason == "not_found":
		return NotFound, true
	case code == 409, code == 400, code == 413:
		return Refused, true
	case code == 503 && (e.Reason == "no_lease" || e.Reason == "not_running"):
		// herd says nothing was written.
		return Refused, true
	default:
		// 503 (no quorum, timed out, node starting), 500: the write may
		// have landed.
		return Unknown, true
	}
}

// Traffic is the gateway workload: GET /hello/ at a constant rate through
// the gateways of nodes that no fault targets at the time.
type Traffic struct {
	c    *Cluster
	tl   *Timeline
	rate float64
	path string
	// healthy returns the nodes a client may use now.
	healthy func() []*Node

	mu   sync.Mutex
	reqs []Request
}

// Request is one recorded gateway request.
type Request struct {
	At      time.Duration `json:"at_ns"`
	Latency time.Duration `json:"latency_ns"`
	Via     string        `json:"via"`
	Code    int           `json:"code"`
	Err     string        `json:"err,omitempty"`
	// Upstream is the node that served the answer (X-Herd-Upstream: the
	// nodes run --debug-headers).
	Upstream string `json:"upstream,omitempty"`
}

// NewTraffic prepares rate requests a second to path.
func NewTraffic(c *Cluster, rate float64, path string, healthy func() []*Node) *Traffic {
	return &Traffic{c: c, tl: c.TL, rate: rate, path: path, healthy: healthy}
}

var gwClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
}

// Run sends requests on schedule (open loop: a slow answer does not delay
// the next request) until ctx ends; latency counts from the scheduled time.
func (t *Traffic) Run(ctx context.Context) {
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / t.rate)
	next := time.Now()
	i := 0
	for ctx.Err() == nil {
		next = next.Add(interval)
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
		case <-timer.C:
		}
		if ctx.Err() != nil {
			break
		}
		nodes := t.healthy()
		if len(nodes) == 0 {
			continue
		}
		n := nodes[i%len(nodes)]
		i++
		scheduled := next
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := Request{At: t.tl.Now(), Via: n.Name}
			resp, err := gwClient.Get(n.Gateway() + t.path)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.Code = resp.StatusCode
				r.Upstream = resp.Header.Get("X-Herd-Upstream")
			}
			r.Latency = time.Since(scheduled)
			if err != nil {
				r.Err = err.Error()
			}
			t.mu.Lock()
			t.reqs = append(t.reqs, r)
			t.mu.Unlock()
		}()
	}
	wg.Wait()
}

// Requests returns what was recorded.
func (t *Traffic) Requests() []Request {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Request(nil), t.reqs...)
}

// Failed: a transport error or a 5xx.
func (r Request) Failed() bool { return r.Err != "" || r.Code >= 500 }
