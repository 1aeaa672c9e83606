package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

func batchBody(t *testing.T, reg []api.BatchRegistration, dereg []api.InstanceRef) string {
	t.Helper()
	b, err := json.Marshal(api.BatchRequest{Register: reg, Deregister: dereg})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func batchReg(service, id string, port int) api.BatchRegistration {
	return api.BatchRegistration{Service: service, ID: id, RegisterRequest: api.RegisterRequest{Address: "127.0.0.1", Port: port}}
}

// consistentCount is how many instances service has in the registry.
func consistentCount(t *testing.T, n *node, service string) int {
	t.Helper()
	k, err := tryConsistentCount(n, service)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// tryConsistentCount is consistentCount for a poll: an error, not a
// failure, when the registry cannot answer (yet).
func tryConsistentCount(n *node, service string) (int, error) {
	var sr api.ServiceResponse
	code, err := getJSON(n.api()+"/v1/services/"+service+"?consistent", &sr)
	if err != nil || code != 200 && code != 404 {
		return 0, fmt.Errorf("consistent read of %s: %d %v", service, code, err)
	}
	return len(sr.Instances), nil
}

// POST /v1/instances registers and deregisters many instances of one node
// in one transaction: all of it or nothing (a bad entry, a key of another
// node, a service the token may not change, too many entries), and what it
// registered is kept across the node's restart.
func TestBatchRegistration(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1)
	n1.start()
	waitUntil(t, 30*time.Second, "node1 ready", n1.ready)
	n2 := c.add(2, "--join", c.ip(1))
	n2.start()
	waitUntil(t, 60*time.Second, "node2 ready", n2.ready)
	mgmt := c.managementToken()
	url := n1.api() + "/v1/instances"

	var reg []api.BatchRegistration
	for i := range 100 {
		reg = append(reg, batchReg(fmt.Sprintf("web-%d", i%4), fmt.Sprintf("w%d", i), 9000))
	}
	if code, e, _ := call(t, http.MethodPost, url, mgmt, batchBody(t, reg, nil)); code != 200 {
		t.Fatalf("a batch of 100: %d %+v", code, e)
	}
	for i := range 4 {
		if n := consistentCount(t, n2, fmt.Sprintf("web-%d", i)); n != 25 {
			t.Fatalf("web-%d has %d instances, want 25", i, n)
		}
	}

	// All or nothing.
	if code, e, _ := call(t, http.MethodPut, n2.api()+"/v1/services/theirs/instances/t1", mgmt, `{"address":"127.0.0.1","port":9}`); code != 200 {
		t.Fatalf("register theirs/t1 on node2: %d %+v", code, e)
	}
	web := createToken(t, n1, mgmt, "web-only", "", "service:web")
	bad := append([]api.BatchRegistration{batchReg("new", "n1", 9000)}, batchReg("new", "n2", 0))
	for _, tc := range []struct {
		name, token, body string
		code              int
		field, reason     string
	}{
		{"a bad entry", mgmt, batchBody(t, bad, nil), 400, "register[1].port", "invalid_field"},
		{"a key of another node", mgmt, batchBody(t, []api.BatchRegistration{batchReg("new", "n1", 9000), batchReg("theirs", "t1", 9000)}, nil), 409, "", "conflict"},
		{"a deregistration of an unknown instance", mgmt, batchBody(t, []api.BatchRegistration{batchReg("new", "n1", 9000)}, []api.InstanceRef{{Service: "new", ID: "nope"}}), 404, "", "not_found"},
		{"a key twice", mgmt, batchBody(t, []api.BatchRegistration{batchReg("new", "n1", 9000), batchReg("new", "n1", 9001)}, nil), 400, "entry 1", "invalid_field"},
		{"a service the token may not change", web, batchBody(t, []api.BatchRegistration{batchReg("web-9", "x", 9000), batchReg("new", "n1", 9000)}, nil), 403, "", "permission_denied"},
		{"a built-in instance", mgmt, batchBody(t, []api.BatchRegistration{batchReg("new", "n1", 9000)}, []api.InstanceRef{{Service: "hello", ID: "node1"}}), 403, "", "builtin_instance"},
		{"129 changes", mgmt, batchBody(t, append(reg, reg[:29]...), nil), 413, "", "batch_too_large"},
		{"an unknown field", mgmt, `{"register":[{"service":"new","id":"n1","address":"127.0.0.1","port":1,"colour":"red"}]}`, 400, "colour", "invalid_field"},
	} {
		code, e, b := call(t, http.MethodPost, url, tc.token, tc.body)
		if code != tc.code || e.Field != tc.field || e.Reason != tc.reason {
			t.Errorf("%s: %d %s, want %d %s %s", tc.name, code, b, tc.code, tc.field, tc.reason)
		}
		if n := consistentCount(t, n2, "new") + consistentCount(t, n2, "web-9"); n != 0 {
			t.Fatalf("%s: the refused batch registered %d instances", tc.name, n)
		}
	}
	// The service token may change what its policy covers, in a batch too.
	if code, e, _ := call(t, http.MethodPost, url, web, batchBody(t, []api.BatchRegistration{batchReg("web-9", "x", 9000)}, []api.InstanceRef{{Service: "web-0", ID: "w0"}})); code != 200 {
		t.Fatalf("a service:web batch: %d %+v", code, e)
	}

	// Kept across a restart of the node that holds them.
	n1.signal(syscall.SIGTERM)
	n1.wait(30 * time.Second)
	n1.start()
	waitUntil(t, 60*time.Second, "node1 ready again", n1.ready)
	waitUntil(t, 30*time.Second, "node1's 100 instances back after its restart", func() error {
		total := 0
		for _, svc := range []string{"web-0", "web-1", "web-2", "web-3", "web-9"} {
			k, err := tryConsistentCount(n2, svc)
			if err != nil {
				return err
			}
			total += k
		}
		if total != 100 {
			return fmt.Errorf("%d of the 99 in web-0..3 and the 1 in web-9", total)
		}
		return nil
	})
	var dereg []api.InstanceRef
	for i := 1; i < 100; i++ {
		dereg = append(dereg, api.InstanceRef{Service: fmt.Sprintf("web-%d", i%4), ID: fmt.Sprintf("w%d", i)})
	}
	if code, e, _ := call(t, http.MethodPost, url, mgmt, batchBody(t, nil, dereg)); code != 200 {
		t.Fatalf("deregister 99 in a batch: %d %+v", code, e)
	}
	for i := range 4 {
		if n := consistentCount(t, n2, fmt.Sprintf("web-%d", i)); n != 0 {
			t.Fatalf("web-%d still has %d", i, n)
		}
	}
	if !strings.Contains(n1.logs(), `action=deregister target="a batch of 99"`) {
		t.Errorf("the batch's audit line is missing")
	}
}
