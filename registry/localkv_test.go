package registry

import (
	"context"
	"testing"
	"time"
)

// LocalClient's key-value calls go to the member in-process while it is a
// voter with a leader (they work with the network client closed), and over
// the network otherwise: on a spare (no member), and once the member has
// stopped.
func TestLocalClientRoutes(t *testing.T) {
	m, _ := startSingle(t)
	waitFor(t, 10*time.Second, "a leader", func() bool { return m.LeaderID() != 0 })
	net := newTestClient(t, m.ClientURL())
	net.Close() // every call over the network now fails
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var member *Member = m
	local := LocalClient(net, func() *Member { return member })
	if _, err := local.Put(ctx, "/test/local", "1"); err != nil {
		t.Fatalf("put through the member in-process: %v", err)
	}
	txn, err := local.Txn(ctx).If().Then().Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("txn through the member in-process: %v %v", txn, err)
	}
	member = nil // a spare
	if _, err := local.Put(ctx, "/test/local", "2"); err == nil {
		t.Fatal("a spare's put did not go over the (closed) network client")
	}
	member = m
	m.Close()
	if m.localKV() != nil {
		t.Fatal("a stopped member is still called in-process")
	}
}
