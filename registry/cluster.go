package registry

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MemberInfo describes one registry member.
type MemberInfo struct {
	ID         uint64
	Name       string // "" until the member has started
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// Members lists the registry members as the member cli talks to knows them
// (a serializable read: it answers without quorum) and the leader's member
// ID (0 when that member knows of no leader). ctx bounds the calls.
func Members(ctx context.Context, cli *clientv3.Client) ([]MemberInfo, uint64, error) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	resp, err := cli.MemberList(lctx, clientv3.WithSerializable())
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("list registry members: %w", unavailable(err))
	}
	out := toInfo(resp.Members)
	var leader uint64
	for _, ep := range cli.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err == nil {
			leader = st.Leader
			break
		}
	}
	return out, leader, nil
}

// MembersLinearizable lists the registry members as the leader has them
// (it needs quorum).
func MembersLinearizable(ctx context.Context, cli *clientv3.Client) ([]MemberInfo, error) {
	ms, err := listMembers(ctx, cli)
	if err != nil {
		return nil, fmt.Errorf("list registry members: %w", unavailable(err))
	}
	return toInfo(ms), nil
}

func toInfo(ms []*etcdserverpb.Member) []MemberInfo {
	out := make([]MemberInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, MemberInfo{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	return out
}

// Alarms lists the registry's active alarms (NOSPACE, CORRUPT), each as
// "<alarm> on member <id>".
func Alarms(ctx context.Context, cli *clientv3.Client) ([]string, error) {
	resp, err := cli.AlarmList(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	var out []string
	for _, a := range resp.Alarms {
		out = append(out, fmt.Sprintf("%s on member %x", a.Alarm, a.MemberID))
	}
	return out, nil
}
