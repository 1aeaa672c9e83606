package registry

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Two nodes joining at the same moment are serialised by the join lock and
// both end up voters; a restart from the data dir comes back as the same
// member.
func TestJoinConcurrentAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := testMemberConfig(t, "n1")
	m1, err := Bootstrap(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m1.Close)

	cfgs := []MemberConfig{testMemberConfig(t, "n2"), testMemberConfig(t, "n3")}
	members := make([]*Member, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			members[i], errs[i] = Join(ctx, cfg, []string{m1.ClientURL()})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("join %s: %v", cfgs[i].Name, err)
		}
		t.Cleanup(members[i].Close)
	}

	cli := newTestClient(t, m1.ClientURL())
	list, leader, err := Members(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || leader == 0 {
		t.Fatalf("members = %+v, leader %x; want 3 and a leader", list, leader)
	}
	for _, m := range list {
		if m.IsLearner || m.Name == "" {
			t.Fatalf("member %+v is not a started voter", m)
		}
	}

	// Restart n3 from its data: same member ID, no join needed.
	id := members[1].ID()
	members[1].Close()
	again, err := Restart(ctx, cfgs[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Close)
	if again.ID() != id {
		t.Fatalf("restarted member id %x, want %x", again.ID(), id)
	}
	select {
	case <-again.ReadyNotify():
	case <-ctx.Done():
		t.Fatal("restarted member never ready")
	}
	if _, err := Join(ctx, cfgs[1], []string{m1.ClientURL()}); err == nil {
		t.Fatal("join over existing data succeeded")
	}
}

// A learner that an interrupted join left (added, never started here) is
// removed and replaced, never started from an empty dir under its old ID.
func TestJoinReplacesAbandonedLearner(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m1, cli := bootstrapFirst(t, ctx)
	cfg := testMemberConfig(t, "n2")
	stale := addTestLearner(t, ctx, cli, cfg).Member.ID
	m2, err := Join(ctx, cfg, []string{m1.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m2.Close)
	if m2.ID() == stale {
		t.Fatal("the abandoned learner's ID was reused from an empty dir")
	}
	list, _, err := Members(ctx, cli)
	if err != nil || len(list) != 2 {
		t.Fatalf("members %+v %v, want n1 and n2", list, err)
	}
}

// A member that stopped as a learner restarts as one and is promoted
// through the voters; a member removed from the cluster says so on Err.
func TestLearnerRestartPromotesAndRemovalReported(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m1, cli := bootstrapFirst(t, ctx)

	cfg := testMemberConfig(t, "n2")
	resp := addTestLearner(t, ctx, cli, cfg)
	initial := "n1=" + m1.PeerURL() + ",n2=" + cfg.PeerURL()
	learner, err := startMember(ctx, cfg, modeExisting, initial, "")
	if err != nil {
		t.Fatal(err)
	}
	learner.Close() // stopped before promotion
	again, err := Restart(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Close)
	if again.ID() != resp.Member.ID || !again.IsLearner() {
		t.Fatalf("restarted as %x learner=%v, want learner %x", again.ID(), again.IsLearner(), resp.Member.ID)
	}
	if err := again.PromoteSelf(ctx, []string{m1.ClientURL()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n2 voting", func() bool { return !again.IsLearner() })

	// etcd refuses reconfiguration until every member has been connected
	// for a few seconds.
	waitFor(t, 20*time.Second, "n2 removed", func() bool {
		_, err := cli.MemberRemove(ctx, again.ID())
		return err == nil
	})
	select {
	case err := <-again.Err():
		if !errors.Is(err, ErrMemberStopped) {
			t.Fatalf("removed member reported %v", err)
		}
	case <-ctx.Done():
		t.Fatal("a removed member reported nothing")
	}
}

// bootstrapFirst starts a one-member registry named n1 and a client to it.
func bootstrapFirst(t *testing.T, ctx context.Context) (*Member, *clientv3.Client) {
	t.Helper()
	m, err := Bootstrap(ctx, testMemberConfig(t, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, newTestClient(t, m.ClientURL())
}

// addTestLearner adds cfg's peer URL as a learner through cli, retrying while
// etcd refuses reconfiguration.
func addTestLearner(t *testing.T, ctx context.Context, cli *clientv3.Client, cfg MemberConfig) *clientv3.MemberAddResponse {
	t.Helper()
	var resp *clientv3.MemberAddResponse
	waitFor(t, 20*time.Second, "learner added", func() bool {
		var err error
		resp, err = cli.MemberAddAsLearner(ctx, []string{cfg.PeerURL()})
		return err == nil
	})
	return resp
}
