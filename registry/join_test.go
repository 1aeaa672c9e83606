package registry

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"
)

func mustJSON(t *testing.T, v any) string {
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
