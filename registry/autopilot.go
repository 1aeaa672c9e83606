package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// designationKey holds the one spare the autopilot has chosen to become a
// voter. One key means one promotion at a time.
const designationKey = "/herd/autopilot/promote"

// Designation names the spare that should join the registry as a voter.
type Designation struct {
	// Name and ID identify the node; a node with the same name but
	// another ID (a rebuilt machine) is not the one designated.
	Name string    `json:"name"`
	ID   string    `json:"id"`
	At   time.Time `json:"at"`
	// Replace is the stale member of a rebuilt node with this name, which
	// the node removes under the join lock before adding itself (0: none).
	Replace uint64 `json:"replace,omitempty"`
}

// ErrDesignated: a designation is already pending.
var ErrDesignated = errors.New("another spare is already being promoted")

// Designate records d if no designation is pending.
func Designate(ctx context.Context, cli *clientv3.Client, d Designation) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(designationKey), "=", 0)).
			Then(clientv3.OpPut(designationKey, string(b))).Commit()
	})
	if err != nil {
		return unavailable(err)
	}
	if !resp.Succeeded {
		return ErrDesignated
	}
	return nil
}

// WatchDesignation signals on the returned channel (without blocking: one
// pending signal at most) whenever the designation changes, until ctx
// ends: a spare learns it was designated at once instead of at its next
// poll. A broken watch is opened again after a second; the caller still
// polls now and then, for what a broken watch missed.
func WatchDesignation(ctx context.Context, cli *clientv3.Client) <-chan struct{} {
	ch := make(chan struct{}, 1)
	signal := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	go func() {
		for ctx.Err() == nil {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range cli.Watch(wctx, designationKey) {
				if resp.Err() != nil {
					break
				}
				signal()
			}
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return ch
}

// CurrentDesignation returns the pending designation and its revision, nil
// when there is none.
func CurrentDesignation(ctx context.Context, cli *clientv3.Client) (*Designation, int64, error) {
	resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.GetResponse, error) {
		return cli.Get(c, designationKey)
	})
	if err != nil {
		return nil, 0, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var d Designation
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		return nil, 0, fmt.Errorf("decode designation: %w", err)
	}
	return &d, resp.Kvs[0].ModRevision, nil
}

// ClearDesignation deletes the designation at revision rev (and nothing
// newer).
func ClearDesignation(ctx context.Context, cli *clientv3.Client, rev int64) error {
	_, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(designationKey), "=", rev)).
			Then(clientv3.OpDelete(designationKey)).Commit()
	})
	return unavailable(err)
}

// RemoveMember removes member id from the registry. etcd refuses a removal
// as "unhealthy cluster" until the members left have all been connected
// for 5s (right after a member was added or came back); RemoveMember asks
// again every second for up to removeUnhealthyWait.
func RemoveMember(ctx context.Context, cli *clientv3.Client, id uint64) error {
	deadline := time.Now().Add(removeUnhealthyWait)
	for {
		_, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
			return cli.MemberRemove(c, id)
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpctypes.ErrUnhealthy) || time.Now().After(deadline) {
			return fmt.Errorf("remove member %x: %w", id, unavailable(err))
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return fmt.Errorf("remove member %x: %w", id, err)
		}
	}
}

// removeUnhealthyWait covers etcd's 5s health interval after a change.
const removeUnhealthyWait = 15 * time.Second

// Reachable reports whether the member serving clientURL answers a status
// request within timeout.
func Reachable(ctx context.Context, cli *clientv3.Client, clientURL string, timeout time.Duration) bool {
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := cli.Status(c, clientURL)
	return err == nil
}

// HasQuorum reports whether a linearizable read succeeds through cli.
func HasQuorum(ctx context.Context, cli *clientv3.Client) bool {
	_, err := withTimeout(ctx, 3*time.Second, func(c context.Context) (*clientv3.GetResponse, error) {
		return cli.Get(c, designationKey, clientv3.WithCountOnly())
	})
	return err == nil
}
