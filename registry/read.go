package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/herdcluster/herd/api"
)

// ReadInstances reads the instances of service from the registry itself
// with a linearizable read: every registration acknowledged before the call
// is in the answer, and nothing deleted before it is. With id set, only that
// instance is read. It fails with ErrUnavailable when the registry has no
// quorum within timeout. rev is the registry revision the answer is from.
//
// The catalog (Catalog.Instances) answers from memory and may trail the
// registry; this is the read behind the API's ?consistent.
func ReadInstances(ctx context.Context, cli *clientv3.Client, timeout time.Duration, service, id string) (ins []api.Instance, rev int64, err error) {
	key, opts := ServicesPrefix+service+"/", []clientv3.OpOption{clientv3.WithPrefix()}
	if id != "" {
		key, opts = InstanceKey(service, id), nil
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), timeout)
	defer cancel()
	resp, err := cli.Get(cctx, key, opts...)
	if err != nil {
		return nil, 0, unavailable(err)
	}
	for _, kv := range resp.Kvs {
		s, i, ok := splitKey(string(kv.Key))
		if !ok {
			continue
		}
		var in api.Instance
		if err := json.Unmarshal(kv.Value, &in); err != nil {
			return nil, 0, fmt.Errorf("registry value of %s is not an instance: %w", kv.Key, err)
		}
		in.Service, in.ID = s, i
		ins = append(ins, in)
	}
	sortByID(ins)
	return ins, resp.Header.Revision, nil
}
