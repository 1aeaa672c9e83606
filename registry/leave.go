package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// forceLeftPrefix holds the names of nodes an operator removed with
// force-leave, so every node drops them from its gossip view.
const forceLeftPrefix = "/herd/force-left/"

// forceLeftTTL is how long a force-leave is remembered (gossip forgets dead
// nodes by itself within the hour).
const forceLeftTTL = 3600

// MoveLeader hands the leadership of the registry to member to. cli must
// reach the current leader.
func MoveLeader(ctx context.Context, cli *clientv3.Client, to uint64) error {
	_, err := withTimeout(ctx, 10*time.Second, func(c context.Context) (*clientv3.MoveLeaderResponse, error) {
		return cli.MoveLeader(c, to)
	})
	if err != nil {
		return fmt.Errorf("move leadership to %x: %w", to, unavailable(err))
	}
	return nil
}

// MarkForceLeft records that name was removed by force-leave, and forgets
// the registrations it kept for its restarts (kept.go), in one
// transaction.
func MarkForceLeft(ctx context.Context, cli *clientv3.Client, name string) error {
	c, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 5*time.Second)
	defer cancel()
	lease, err := cli.Grant(c, forceLeftTTL)
	if err != nil {
		return unavailable(err)
	}
	_, err = cli.Txn(c).Then(
		clientv3.OpPut(forceLeftPrefix+name, name, clientv3.WithLease(lease.ID)),
		clientv3.OpDelete(keptPrefixOf(name), clientv3.WithPrefix()),
	).Commit()
	return unavailable(err)
}

// ForceLeft lists the names removed by force-leave within the hour.
func ForceLeft(ctx context.Context, cli *clientv3.Client) ([]string, error) {
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := cli.Get(c, forceLeftPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSerializable())
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), forceLeftPrefix))
	}
	return out, nil
}
