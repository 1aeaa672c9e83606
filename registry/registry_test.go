package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newTestRegistrar(t *testing.T, cli *clientv3.Client, node string) *Registrar {
	t.Helper()
	return newTestRegistrarTTL(t, cli, node, 3*time.Second)
}

func newTestRegistrarTTL(t *testing.T, cli *clientv3.Client, node string, ttl time.Duration) *Registrar {
	t.Helper()
	cfg := DefaultRegistrarConfig(node)
	cfg.TTL = ttl
	cfg.Logger = testLogger(t)
	r, err := NewRegistrar(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	waitFor(t, 10*time.Second, "a lease", func() bool { return r.LeaseID() != 0 })
	return r
}

func newTestCatalog(t *testing.T, cli *clientv3.Client) *Catalog {
	t.Helper()
	c := NewCatalog(cli, 2*time.Second, testLogger(t))
	c.Start()
	t.Cleanup(c.Close)
	waitFor(t, 10*time.Second, "catalog sync", func() bool { ok, _ := c.Synced(); return ok })
	return c
}

func instance(service, id string, port int) api.Instance {
	return api.Instance{Service: service, ID: id, Address: "127.0.0.1", Port: port}
}

func hasInstance(c *Catalog, service, id string) bool {
	for _, in := range c.Instances(service) {
		if in.ID == id {
			return true
		}
	}
	return false
}

func TestRegisterDeregisterCatalog(t *testing.T) {
	_, cli := startSingle(t)
	r := newTestRegistrar(t, cli, "node-a")
	c := newTestCatalog(t, cli)
	ctx := context.Background()

	if err := r.Register(ctx, instance("web", "web-1", 9001)); err != nil {
		t.Fatalf("register: %v", err)
	}
	if err := r.Register(ctx, instance("web", "web-2", 9002)); err != nil {
		t.Fatalf("register: %v", err)
	}
	waitFor(t, 5*time.Second, "both instances in the catalog", func() bool {
		return len(c.Instances("web")) == 2
	})
	got := c.Instances("web")
	if got[0].ID != "web-1" || got[0].Node != "node-a" || got[0].Weight != 1 || got[0].Health != api.HealthPassing {
		t.Fatalf("first instance = %+v", got[0])
	}
	if s := c.Services(); len(s) != 1 || s[0] != (api.ServiceSummary{Name: "web", Instances: 2}) {
		t.Fatalf("services = %+v", s)
	}

	if err := r.Deregister(ctx, "web", "web-1"); err != nil {
		t.Fatalf("deregister: %v", err)
	}
	waitFor(t, 5*time.Second, "web-1 gone", func() bool { return !hasInstance(c, "web", "web-1") })
	if err := r.Deregister(ctx, "web", "web-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second deregister: got %v, want ErrNotFound", err)
	}
	if err := r.Deregister(ctx, "web", "web-2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "service gone", func() bool { return len(c.Services()) == 0 })
}

func TestRegisterRejectsInvalidAndForeign(t *testing.T) {
	_, cli := startSingle(t)
	a := newTestRegistrar(t, cli, "node-a")
	b := newTestRegistrar(t, cli, "node-b")
	ctx := context.Background()

	for _, tc := range []struct {
		in    api.Instance
		field string
	}{
		{instance("Bad_Name", "x", 1), "service"},
		{instance("web", "-x", 1), "id"},
		{api.Instance{Service: "web", ID: "x", Address: "nope", Port: 1}, "address"},
		{instance("web", "x", 70000), "port"},
	} {
		var fe *api.FieldError
		if err := a.Register(ctx, tc.in); !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("register %+v: got %v, want a FieldError on %s", tc.in, err, tc.field)
		}
	}

	if err := a.Register(ctx, instance("web", "shared", 1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, instance("web", "shared", 2)); !errors.Is(err, ErrConflict) {
		t.Fatalf("foreign overwrite: got %v, want ErrConflict", err)
	}
	if err := b.Deregister(ctx, "web", "shared"); !errors.Is(err, ErrConflict) {
		t.Fatalf("foreign delete: got %v, want ErrConflict", err)
	}
}

// The registrar must notice a lost lease by itself, grant a new one and put
// every instance back, without anyone calling Register again.
func TestLeaseLossReRegisters(t *testing.T) {
	_, cli := startSingle(t)
	r := newTestRegistrar(t, cli, "node-a")
	c := newTestCatalog(t, cli)
	ctx := context.Background()
	for i := range 3 {
		if err := r.Register(ctx, instance("web", fmt.Sprintf("web-%d", i), 9000+i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "3 instances", func() bool { return len(c.Instances("web")) == 3 })

	for round := range 2 {
		old := r.LeaseID()
		gens := r.Leases()
		// An outside revoke is what an expiry looks like to the node.
		if _, err := cli.Revoke(ctx, old); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "instances gone with the lease", func() bool { return len(c.Instances("web")) < 3 })
		waitFor(t, 10*time.Second, "instances back under a new lease", func() bool {
			return r.Leases() > gens && len(c.Instances("web")) == 3
		})
		if r.LeaseID() == old {
			t.Fatalf("round %d: lease not replaced", round)
		}
		ttl, err := cli.TimeToLive(ctx, r.LeaseID(), clientv3.WithAttachedKeys())
		if err != nil || len(ttl.Keys) != 3 {
			t.Fatalf("round %d: new lease has %d keys (%v), want 3", round, len(ttl.Keys), err)
		}
	}
}

// CheckLease notices at once a lease revoked behind the registrar's back
// (as a paused old leader does, etcd #15247): with a 30s TTL the next
// keepalive would be 10s away, but the instances are back within 3s.
func TestCheckLeaseNoticesRevokeAtOnce(t *testing.T) {
	_, cli := startSingle(t)
	r := newTestRegistrarTTL(t, cli, "node-a", 30*time.Second)
	c := newTestCatalog(t, cli)
	ctx := context.Background()
	if err := r.Register(ctx, instance("web", "web-1", 9000)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the instance", func() bool { return len(c.Instances("web")) == 1 })
	// Let the keepalive that follows the grant go by first.
	waitFor(t, 5*time.Second, "the lease renewed once", func() bool {
		ttl, err := cli.TimeToLive(ctx, r.LeaseID())
		return err == nil && ttl.TTL > 0 && ttl.TTL < 30
	})
	old := r.LeaseID()
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the instance gone with the lease", func() bool { return len(c.Instances("web")) == 0 })
	start := time.Now()
	r.CheckLease()
	waitFor(t, 3*time.Second, "the instance back under a new lease", func() bool {
		return r.LeaseID() != old && len(c.Instances("web")) == 1
	})
	t.Logf("re-registered %s after CheckLease", time.Since(start).Round(time.Millisecond))
}

// Close revokes the lease: the instances leave the registry at once, not
// after the TTL.
func TestCloseRevokes(t *testing.T) {
	_, cli := startSingle(t)
	r := newTestRegistrar(t, cli, "node-a")
	c := newTestCatalog(t, cli)
	if err := r.Register(context.Background(), instance("web", "w", 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "instance", func() bool { return hasInstance(c, "web", "w") })
	start := time.Now()
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("second close: %v", err)
	}
	waitFor(t, 2*time.Second, "instance gone after close", func() bool { return !hasInstance(c, "web", "w") })
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("instance lingered %s after close", d)
	}
}

// Without a reachable registry, Register fails with ErrUnavailable within
// the request timeout instead of hanging.
func TestRegisterWithoutRegistryFailsFast(t *testing.T) {
	m, cli := startSingle(t)
	cfg := DefaultRegistrarConfig("node-a")
	cfg.RequestTimeout = time.Second
	r, err := NewRegistrar(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	waitFor(t, 10*time.Second, "a lease", func() bool { return r.LeaseID() != 0 })
	m.Close()
	start := time.Now()
	err = r.Register(context.Background(), instance("web", "w", 1))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("register without registry: got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("register took %s", d)
	}
}

// A catalog whose watch falls behind a compaction must list again: deletes
// and puts made while it was cut off are all reflected afterwards.
func TestCatalogRelistsAfterCompaction(t *testing.T) {
	m, cli := startSingle(t)
	proxy := newTCPProxy(t, m.ClientURL()[len("https://"):])
	catCli := newTestClient(t, "https://"+proxy.addr())
	c := newTestCatalog(t, catCli)
	ctx := context.Background()

	put := func(service, id string) {
		t.Helper()
		in := instance(service, id, 80)
		in.Node = "writer"
		in.Normalize()
		if _, err := cli.Put(ctx, InstanceKey(service, id), mustJSON(t, in)); err != nil {
			t.Fatal(err)
		}
	}
	put("web", "keep")
	put("web", "gone")
	put("stable", "s1")
	waitFor(t, 5*time.Second, "the instances", func() bool { return len(c.Instances("web")) == 2 && len(c.Instances("stable")) == 1 })
	relists := c.Relists()
	_, webIndex := c.Service("web")
	_, stableIndex := c.Service("stable")
	_, churnIndex := c.Service("churn")

	proxy.setCut(true)
	waitFor(t, 10*time.Second, "catalog to notice the cut", func() bool { ok, _ := c.Synced(); return !ok })
	if _, err := cli.Delete(ctx, InstanceKey("web", "gone")); err != nil {
		t.Fatal(err)
	}
	put("api", "new")
	for i := range 20 { // churn so the compaction point is well past the catalog
		put("churn", fmt.Sprintf("c%d", i))
		if _, err := cli.Delete(ctx, InstanceKey("churn", fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	compacted := compactAll(t, cli)
	// Served from the last snapshot meanwhile.
	if !hasInstance(c, "web", "gone") {
		t.Fatal("catalog dropped its snapshot while cut off")
	}
	proxy.setCut(false)

	waitFor(t, 15*time.Second, "catalog to converge after the cut", func() bool {
		ok, _ := c.Synced()
		return ok && !hasInstance(c, "web", "gone") && hasInstance(c, "web", "keep") && hasInstance(c, "api", "new") &&
			len(c.Instances("churn")) == 0
	})
	if c.Relists() <= relists {
		t.Fatal("catalog converged without listing again")
	}
	if c.Revision() < compacted {
		t.Fatalf("catalog revision %d behind %d", c.Revision(), compacted)
	}
	// Indexes only go forward: what changed meanwhile moved past the
	// compaction, what did not kept its index.
	if _, i := c.Service("web"); i < compacted || i <= webIndex {
		t.Errorf("web's index %d after the re-list, was %d, compacted at %d", i, webIndex, compacted)
	}
	if _, i := c.Service("churn"); i <= churnIndex {
		t.Errorf("churn's index %d after the re-list, was %d", i, churnIndex)
	}
	if _, i := c.Service("stable"); i != stableIndex {
		t.Errorf("stable's index %d after the re-list, was %d", i, stableIndex)
	}
}

// A service's index moves with its changes only; Wait returns at a change
// past the index, or at its context's end with the same index, and leaves
// no waiter behind.
func TestCatalogServiceIndexAndWait(t *testing.T) {
	_, cli := startSingle(t)
	c := newTestCatalog(t, cli)
	ctx := context.Background()
	put := func(service, id string, port int) int64 {
		t.Helper()
		in := instance(service, id, port)
		in.Node = "writer"
		in.Normalize()
		resp, err := cli.Put(ctx, InstanceKey(service, id), mustJSON(t, in))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	rev := put("web", "w1", 80)
	put("db", "d1", 5432)
	waitFor(t, 5*time.Second, "both services", func() bool { return len(c.Instances("web")) == 1 && len(c.Instances("db")) == 1 })
	_, index := c.Service("web")
	if index != rev {
		t.Fatalf("web's index %d, want its write's revision %d", index, rev)
	}
	_, none := c.Service("nosuch")
	if none <= 0 || none > index {
		t.Fatalf("an unknown service's index %d (web's %d)", none, index)
	}

	// A change to another service wakes no one; one to web does.
	got := make(chan int64, 1)
	go func() {
		_, i := c.Wait(ctx, "web", index)
		got <- i
	}()
	put("db", "d2", 5433)
	waitFor(t, 5*time.Second, "db's change", func() bool { return len(c.Instances("db")) == 2 })
	select {
	case i := <-got:
		t.Fatalf("a change to db woke web's waiter (index %d)", i)
	default:
	}
	rev = put("web", "w1", 81)
	select {
	case i := <-got:
		if i != rev {
			t.Fatalf("woken at index %d, want %d", i, rev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("web's change did not wake its waiter")
	}

	// Nothing changes: the wait ends with the context, at the same index.
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, i := c.Wait(wctx, "web", rev); i != rev {
		t.Fatalf("a wait that saw no change returned index %d, want %d", i, rev)
	}
	wctx2, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	c.Wait(wctx2, "nosuch", none)
	c.changedMu.Lock()
	left := len(c.waiters)
	c.changedMu.Unlock()
	if left != 0 {
		t.Fatalf("%d waiters left behind", left)
	}
}

// A watch that resumes more than a thousand revisions behind is fed in
// batches whose header revision runs ahead of the events still to come; the
// catalog must apply every batch.
func TestCatalogCatchesUpInBatches(t *testing.T) {
	m, cli := startSingle(t)
	proxy := newTCPProxy(t, m.ClientURL()[len("https://"):])
	catCli := newTestClient(t, "https://"+proxy.addr())
	c := NewCatalog(catCli, time.Minute, testLogger(t)) // never relist here
	c.Start()
	t.Cleanup(c.Close)
	waitFor(t, 10*time.Second, "catalog sync", func() bool { ok, _ := c.Synced(); return ok })

	proxy.setCut(true)
	ctx := context.Background()
	const n = 1500
	for i := range n {
		in := instance("bulk", fmt.Sprintf("i%04d", i), 80)
		in.Node = "writer"
		in.Normalize()
		if _, err := cli.Put(ctx, InstanceKey("bulk", in.ID), mustJSON(t, in)); err != nil {
			t.Fatal(err)
		}
	}
	proxy.setCut(false)
	waitFor(t, 30*time.Second, "all instances after the catch-up", func() bool { return len(c.Instances("bulk")) == n })
	if c.Relists() != 0 {
		t.Fatalf("caught up by listing again (%d), not through the watch", c.Relists())
	}
}

// keptValues returns node's kept registrations: service/id -> port.
func keptValues(t *testing.T, cli *clientv3.Client, node string) map[string]int {
	t.Helper()
	resp, err := cli.Get(context.Background(), keptPrefixOf(node), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, kv := range resp.Kvs {
		var in api.Instance
		if err := json.Unmarshal(kv.Value, &in); err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		out[strings.TrimPrefix(string(kv.Key), keptPrefixOf(node))] = in.Port
	}
	return out
}

// A kept registration is kept in the registry with its instance, in the
// same transaction; registering it again unkept, deregistering it, or a
// batch change its kept copy alike; a new registrar of the node (the node
// restarted) registers what is kept and nothing else.
func TestKeptInRegistry(t *testing.T) {
	_, cli := startSingle(t)
	ctx := context.Background()
	r := newTestRegistrar(t, cli, "node-a")
	for i, id := range []string{"a", "b", "c", "d"} {
		if err := r.RegisterKept(ctx, instance("web", id, 80+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Register(ctx, instance("web", "plain", 90)); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterKept(ctx, instance("web", "a", 88)); err != nil { // changed
		t.Fatal(err)
	}
	if err := r.Register(ctx, instance("web", "b", 81)); err != nil { // no longer kept
		t.Fatal(err)
	}
	if err := r.Deregister(ctx, "web", "c"); err != nil {
		t.Fatal(err)
	}
	if err := r.Batch(ctx, []api.Instance{instance("api", "x", 70)}, []Ref{{Service: "web", ID: "d"}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"web/a": 88, "api/x": 70}
	if got := keptValues(t, cli, "node-a"); !maps.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	// A crash: the lease expires (revoked here), the kept copies stay.
	if _, err := cli.Revoke(ctx, r.LeaseID()); err != nil {
		t.Fatal(err)
	}
	r.Close(ctx)
	r2 := newTestRegistrar(t, cli, "node-a")
	waitFor(t, 10*time.Second, "the kept instances under the new lease", func() bool {
		ttl, err := cli.TimeToLive(ctx, r2.LeaseID(), clientv3.WithAttachedKeys())
		return err == nil && len(ttl.Keys) == 2
	})
	var got []string
	for _, in := range r2.Instances() {
		got = append(got, fmt.Sprintf("%s/%s:%d", in.Service, in.ID, in.Port))
	}
	if strings.Join(got, ",") != "api/x:70,web/a:88" {
		t.Fatalf("registered after the restart: %v", got)
	}
	// Another node's kept registrations are its own.
	if got := keptValues(t, cli, "node-b"); len(got) != 0 {
		t.Fatalf("node-b keeps %v", got)
	}
	if err := ForgetKept(ctx, cli, "node-a"); err != nil {
		t.Fatal(err)
	}
	if got := keptValues(t, cli, "node-a"); len(got) != 0 {
		t.Fatalf("kept after ForgetKept: %v", got)
	}
}

// A restarted node registers what it kept in batches: every instance
// (more than two transactions' worth) is back under one lease, but the key
// another node took meanwhile, which is dropped from what it keeps.
func TestKeptInstancesRegisteredInBatches(t *testing.T) {
	_, cli := startSingle(t)
	ctx := context.Background()
	other := newTestRegistrar(t, cli, "node-b")
	if err := other.Register(ctx, instance("web", "taken", 1)); err != nil {
		t.Fatal(err)
	}
	keep := func(in api.Instance) {
		in.Node = "node-a"
		in.Normalize()
		if _, err := cli.Put(ctx, keptKey("node-a", in.Service, in.ID), mustJSON(t, in)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		keep(instance("web", fmt.Sprintf("w%03d", i), 2000+i))
	}
	keep(instance("web", "taken", 2))
	r := newTestRegistrar(t, cli, "node-a")
	waitFor(t, 10*time.Second, "300 instances under node-a's lease", func() bool {
		ttl, err := cli.TimeToLive(ctx, r.LeaseID(), clientv3.WithAttachedKeys())
		return err == nil && len(ttl.Keys) == 300
	})
	waitFor(t, 10*time.Second, "the taken key no longer kept", func() bool {
		got := keptValues(t, cli, "node-a")
		_, still := got["web/taken"]
		return !still && len(got) == 300
	})
	resp, err := cli.Get(ctx, InstanceKey("web", "taken"))
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"node-b"`) {
		t.Fatalf("the taken key: %v %v", resp, err)
	}
}

// merged applies changes to a sorted service in one pass and keeps it
// sorted: additions before, between and after, replacements, deletes.
func TestMergedKeepsOrder(t *testing.T) {
	old := []api.Instance{{ID: "b", Port: 1}, {ID: "d", Port: 1}, {ID: "f", Port: 1}}
	changes := map[string]*api.Instance{
		"a": {ID: "a", Port: 2}, "c": {ID: "c", Port: 2}, "d": {ID: "d", Port: 2},
		"f": nil, "g": {ID: "g", Port: 2}, "x": nil,
	}
	var got []string
	for _, in := range merged(old, changes) {
		got = append(got, fmt.Sprintf("%s%d", in.ID, in.Port))
	}
	if strings.Join(got, ",") != "a2,b1,c2,d2,g2" {
		t.Fatalf("merged: %v", got)
	}
	if len(merged(old, map[string]*api.Instance{"b": nil, "d": nil, "f": nil})) != 0 {
		t.Fatal("deleting every instance left some")
	}
}

// A batch of MaxBatch changes, the most there may be, fits in one
// transaction although each writes two keys (the instance and its kept
// copy): the members allow txnOpsLimit operations.
func TestBatchAtMaxSize(t *testing.T) {
	_, cli := startSingle(t)
	ctx := context.Background()
	r := newTestRegistrar(t, cli, "node-a")
	var reg []api.Instance
	for i := range MaxBatch {
		reg = append(reg, instance("big", fmt.Sprintf("b%03d", i), 1000+i))
	}
	if err := r.Batch(ctx, reg, nil); err != nil {
		t.Fatalf("a batch of %d registrations: %v", MaxBatch, err)
	}
	var dereg []Ref
	for i := range MaxBatch {
		dereg = append(dereg, Ref{Service: "big", ID: fmt.Sprintf("b%03d", i)})
	}
	if err := r.Batch(ctx, nil, dereg); err != nil {
		t.Fatalf("a batch of %d deregistrations: %v", MaxBatch, err)
	}
	if got := keptValues(t, cli, "node-a"); len(got) != 0 {
		t.Fatalf("kept after deregistering them all: %d", len(got))
	}
}
