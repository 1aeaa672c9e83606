package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// joinLockKey serialises joins: etcd admits one learner at a time.
const joinLockKey = "/herd/locks/join"

// Join errors.
var (
	// ErrNameTaken: the registry already has a started member with this
	// node's name while this node has no data of its own.
	ErrNameTaken = errors.New("a registry member with this name already exists")
	// ErrPeerURLTaken: another member already uses this node's peer URL.
	ErrPeerURLTaken = errors.New("another registry member uses this peer URL")
)

// retryInterval is how often a join step that etcd refuses for a passing
// reason (learner not caught up, cluster not yet healthy, another learner in
// the way) is tried again.
const retryInterval = 250 * time.Millisecond

// Join adds this node to the cluster reachable at clientURLs: under the join
// lock it adds itself as a learner (first removing any learner an
// interrupted earlier attempt left with its peer URL), starts its member
// with state "existing", and promotes it to voter once etcd accepts that.
// Passing refusals are retried until ctx is done. If the member fails to
// start, its learner is removed and its dir wiped. If it started but ctx
// ends before promotion, it is stopped with its data kept: the node then
// restarts as that learner and PromoteSelf finishes the job.
func Join(ctx context.Context, cfg MemberConfig, clientURLs []string) (*Member, error) {
	return JoinReplacing(ctx, cfg, clientURLs, 0)
}

// JoinReplacing is Join for a node rebuilt with new data: under the join lock
// it first removes stale, the member its name had before (which never runs
// again), if the voters left can still reach quorum without it.
func JoinReplacing(ctx context.Context, cfg MemberConfig, clientURLs []string, stale uint64) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if HasData(cfg.Dir) {
		return nil, fmt.Errorf("join: %s already holds a member: %w", cfg.Dir, ErrHasData)
	}
	if len(clientURLs) == 0 {
		return nil, errors.New("join: no registry client URLs known yet")
	}
	cli, err := NewClient(clientURLs, cfg.TLS.clientConfig(), cfg.log())
	if err != nil {
		return nil, err
	}
	defer cli.Close()

	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("join: open lock session via %v: %w", clientURLs, err)
	}
	defer sess.Close()
	mu := concurrency.NewMutex(sess, joinLockKey)
	if err := mu.Lock(ctx); err != nil {
		return nil, fmt.Errorf("join: take the join lock: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = mu.Unlock(uctx)
	}()

	if stale != 0 {
		if err := removeStale(ctx, cli, cfg, stale); err != nil {
			return nil, err
		}
	}
	id, initial, err := addLearner(ctx, cli, cfg)
	if err != nil {
		return nil, err
	}
	m, err := startMember(ctx, cfg, modeExisting, initial, "")
	if err != nil {
		// The learner may have received part of the log: its ID must
		// never be started again from an empty dir (raft panics on a
		// commit index beyond its log). Remove it, then wipe what it
		// wrote; the next attempt adds a new learner.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, rerr := withTimeout(rctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
			return cli.MemberRemove(c, id)
		})
		cancel()
		if rerr != nil && !errors.Is(rerr, rpctypes.ErrMemberNotFound) {
			cfg.log().Warn("could not remove the learner of a failed join; the next attempt removes it", "member_id", fmt.Sprintf("%x", id), "err", rerr)
		}
		_ = os.RemoveAll(cfg.Dir)
		return nil, fmt.Errorf("join: start member as learner: %w", err)
	}
	if err := promote(ctx, cli, id); err != nil {
		m.Close()
		return nil, err
	}
	cfg.log().Info("joined the registry as a voter", "member_id", fmt.Sprintf("%x", id))
	return m, nil
}

// addLearner adds cfg's peer URL as a learner, or finds the learner an
// earlier attempt added, and returns its ID and the initial-cluster string
// for starting it.
func addLearner(ctx context.Context, cli *clientv3.Client, cfg MemberConfig) (uint64, string, error) {
	peerURL := cfg.PeerURL()
attempt:
	for {
		members, err := listMembers(ctx, cli)
		if err != nil {
			return 0, "", fmt.Errorf("join: list members: %w", err)
		}
		var mine *etcdserverpb.Member
		for _, m := range members {
			switch {
			case m.Name == cfg.Name && !slices.Contains(m.PeerURLs, peerURL):
				return 0, "", fmt.Errorf("join: member %q (id %x, peer %s): %w; if that node was rebuilt, remove its old member first",
					m.Name, m.ID, strings.Join(m.PeerURLs, ","), ErrNameTaken)
			case m.Name == cfg.Name && m.IsLearner:
				// This node's own learner from a join that stopped before
				// promotion, and whose data is gone: it must not be started
				// again from an empty dir. Remove it and add a new one.
				if _, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
					return cli.MemberRemove(c, m.ID)
				}); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
					return 0, "", fmt.Errorf("join: remove this node's earlier learner %x: %w", m.ID, err)
				}
				cfg.log().Info("removed this node's learner from an earlier join whose data is gone", "member_id", fmt.Sprintf("%x", m.ID))
				continue attempt
			case m.Name == cfg.Name:
				return 0, "", fmt.Errorf("join: member %q (id %x) already exists with this peer URL but this node has no data: %w; remove the old member first",
					m.Name, m.ID, ErrNameTaken)
			case slices.Contains(m.PeerURLs, peerURL) && m.Name != "":
				return 0, "", fmt.Errorf("join: %s is used by member %q: %w", peerURL, m.Name, ErrPeerURLTaken)
			case slices.Contains(m.PeerURLs, peerURL):
				// A learner an earlier attempt added and never started
				// here. The leader may already count part of its log as
				// sent, so it is never reused from an empty dir: remove
				// it and add a new one.
				if _, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
					return cli.MemberRemove(c, m.ID)
				}); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
					return 0, "", fmt.Errorf("join: remove the learner %x an earlier attempt left: %w", m.ID, err)
				}
				cfg.log().Info("removed the learner an earlier join attempt left", "member_id", fmt.Sprintf("%x", m.ID))
				continue attempt
			}
		}
		if mine == nil {
			resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberAddResponse, error) {
				return cli.MemberAddAsLearner(c, []string{peerURL})
			})
			switch {
			case err == nil:
				mine = resp.Member
				members = resp.Members
			case errors.Is(err, rpctypes.ErrTooManyLearners):
				// We hold the join lock, so a learner that never started
				// was left by a joiner that died between add and start.
				if removeAbandonedLearner(ctx, cli, members, cfg) {
					continue
				}
				if err := sleepCtx(ctx, retryInterval); err != nil {
					return 0, "", fmt.Errorf("join: %w (last: %w)", err, rpctypes.ErrTooManyLearners)
				}
				continue
			case errors.Is(err, rpctypes.ErrMemberNotFound):
				// etcd derives a new member's ID from its peer URLs and the
				// current second: re-adding a peer URL in the second its
				// old learner was removed yields that removed ID, which
				// etcd refuses. The next second gives a new ID.
				if err2 := sleepCtx(ctx, time.Second); err2 != nil {
					return 0, "", fmt.Errorf("join: add learner: %w", err)
				}
				continue
			case errors.Is(err, rpctypes.ErrUnhealthy), errors.Is(unavailable(err), ErrUnavailable):
				// Right after formation etcd refuses reconfiguration until
				// every member has been connected for 5s: ask every second.
				if err2 := sleepCtx(ctx, time.Second); err2 != nil {
					return 0, "", fmt.Errorf("join: add learner: %w", err)
				}
				continue
			default:
				return 0, "", fmt.Errorf("join: add learner: %w", err)
			}
		}
		var parts []string
		for _, m := range members {
			name := m.Name
			if m.ID == mine.ID {
				name = cfg.Name
			}
			if name == "" {
				// Another unstarted member: only possible while a join
				// runs without the lock; wait for it to settle.
				if err := sleepCtx(ctx, retryInterval); err != nil {
					return 0, "", fmt.Errorf("join: member %x has not started: %w", m.ID, err)
				}
				parts = nil
				break
			}
			for _, u := range m.PeerURLs {
				parts = append(parts, name+"="+u)
			}
		}
		if parts == nil {
			continue
		}
		return mine.ID, strings.Join(parts, ","), nil
	}
}

// removeStale removes the stale member id of this node's name, if it still
// exists, is this name's, and the other voters answer in a number that
// keeps quorum once it is gone.
func removeStale(ctx context.Context, cli *clientv3.Client, cfg MemberConfig, id uint64) error {
	members, err := listMembers(ctx, cli)
	if err != nil {
		return fmt.Errorf("join: list members: %w", err)
	}
	var stale *etcdserverpb.Member
	voters, answering := 0, 0
	for _, m := range members {
		if m.ID == id {
			stale = m
			continue
		}
		if m.IsLearner {
			continue
		}
		voters++
		if len(m.ClientURLs) > 0 && Reachable(ctx, cli, m.ClientURLs[0], time.Second) {
			answering++
		}
	}
	if stale == nil {
		return nil // already gone
	}
	if stale.Name != cfg.Name && stale.Name != "" {
		return fmt.Errorf("join: member %x to replace is %q's, not this node's", id, stale.Name)
	}
	if answering < voters/2+1 {
		return fmt.Errorf("join: %d of %d other voters answer; removing this node's stale member would lose quorum: %w", answering, voters, ErrUnavailable)
	}
	if _, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
		return cli.MemberRemove(c, id)
	}); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
		return fmt.Errorf("join: remove this node's stale member %x: %w", id, err)
	}
	cfg.log().Warn("removed this node's stale member (the node was rebuilt with new data)", "member_id", fmt.Sprintf("%x", id))
	return nil
}

// removeAbandonedLearner removes one learner that never started (no name)
// and is not this node's. It reports whether it removed one.
func removeAbandonedLearner(ctx context.Context, cli *clientv3.Client, members []*etcdserverpb.Member, cfg MemberConfig) bool {
	for _, m := range members {
		if m.IsLearner && m.Name == "" && !slices.Contains(m.PeerURLs, cfg.PeerURL()) {
			_, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberRemoveResponse, error) {
				return cli.MemberRemove(c, m.ID)
			})
			if err == nil {
				cfg.log().Warn("removed a learner that an interrupted join left unstarted", "member_id", fmt.Sprintf("%x", m.ID), "peer_urls", m.PeerURLs)
				return true
			}
		}
	}
	return false
}

// promote promotes learner id until etcd accepts it or says it is already a
// voter.
func promote(ctx context.Context, cli *clientv3.Client, id uint64) error {
	for {
		_, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberPromoteResponse, error) {
			return cli.MemberPromote(c, id)
		})
		switch {
		case err == nil, errors.Is(err, rpctypes.ErrMemberNotLearner):
			return nil
		case errors.Is(err, rpctypes.ErrMemberLearnerNotReady), errors.Is(err, rpctypes.ErrUnhealthy),
			errors.Is(unavailable(err), ErrUnavailable):
			if err2 := sleepCtx(ctx, retryInterval); err2 != nil {
				return fmt.Errorf("promote learner %x: %w (last: %w)", id, err2, err)
			}
		default:
			return fmt.Errorf("promote learner %x: %w", id, err)
		}
	}
}

// PromoteSelf promotes the member if it is a learner, through the voters at
// clientURLs (a learner cannot serve the request itself): a node that
// stopped between joining and promotion restarts as a learner and finishes
// the job here. It retries passing refusals until it succeeds or ctx is
// done.
func (m *Member) PromoteSelf(ctx context.Context, clientURLs []string) error {
	if !m.IsLearner() {
		return nil
	}
	if len(clientURLs) == 0 {
		return errors.New("promote: no voter client URLs known yet")
	}
	cli, err := NewClient(clientURLs, m.cfg.TLS.clientConfig(), m.logger)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := promote(ctx, cli, m.ID()); err != nil {
		return err
	}
	m.logger.Info("promoted this member from learner to voter", "member_id", fmt.Sprintf("%x", m.ID()))
	return nil
}

func listMembers(ctx context.Context, cli *clientv3.Client) ([]*etcdserverpb.Member, error) {
	resp, err := withTimeout(ctx, 5*time.Second, func(c context.Context) (*clientv3.MemberListResponse, error) {
		return cli.MemberList(c)
	})
	if err != nil {
		return nil, err
	}
	return resp.Members, nil
}

func withTimeout[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	c, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), d)
	defer cancel()
	return f(c)
}

// sleepCtx waits d or until ctx is done, returning ctx's error then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
