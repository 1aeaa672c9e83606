package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// startMember gives the node its place in the registry, as the data dir and
// the flags say:
//   - a data dir with a member restarts it (whatever the flags), unless the
//     cluster removed it meanwhile: then its data is cleared and the node
//     carries on as a spare;
//   - --bootstrap-expect forms a new cluster with the other expected nodes
//     (or joins the one they formed);
//   - no --join bootstraps a new one-member cluster;
//   - --join makes the node a spare of the cluster found through gossip;
//     the autopilot promotes it to voter when the cluster needs one.
func (n *Node) startMember(ctx context.Context) error {
	mc := n.memberConfig()
	var (
		m   *registry.Member
		err error
	)
	switch {
	case n.cfg.ForceNewCluster && !registry.HasData(mc.Dir):
		return fmt.Errorf("--force-new-cluster: %s holds no registry member to restart", mc.Dir)
	case registry.HasData(mc.Dir):
		n.logger.Info("data dir holds a registry member: restarting it", "dir", mc.Dir)
		marker := filepath.Join(n.cfg.DataDir, forcedMarker)
		if n.cfg.ForceNewCluster {
			if _, err := os.Stat(marker); err == nil {
				// Forcing again would drop every member that joined since:
				// a flag left in a unit file must not do that on a restart.
				n.logger.Warn("--force-new-cluster ignored: this data dir was already forced into a new cluster; delete the marker to force again", "marker", marker)
				mc.ForceNewCluster = false
			} else {
				n.logger.Warn("--force-new-cluster: restarting this member as the only member of a new cluster, keeping its data")
			}
		}
		// Join flags and the peers seen last time only help a restarted
		// member find its peers' gossip; failing to reach them is not
		// fatal, and the node keeps trying in the background.
		if addrs := n.rejoinAddrs(); len(addrs) > 0 {
			n.goBackground(func(ctx context.Context) { _ = n.joinGossip(ctx, addrs, time.Time{}) })
		}
		m, err = registry.Restart(ctx, mc)
		if err == nil && mc.ForceNewCluster {
			if werr := os.WriteFile(marker, []byte(fmt.Sprintf("%x\n", m.ID())), 0o600); werr != nil {
				n.logger.Warn("could not record the forced new cluster", "err", werr)
			}
		}
		if errors.Is(err, registry.ErrMemberStopped) {
			n.logger.Warn("the restarted member stopped at once; checking whether the cluster removed it")
			if rerr := n.clearIfRemoved(ctx); rerr != nil {
				return fmt.Errorf("%w (%w)", err, rerr)
			}
			return n.waitForVoters(ctx, time.Time{})
		}
	case n.cfg.BootstrapExpect > 1:
		m, err = n.bootstrapExpect(ctx, mc)
	case len(n.cfg.Join) == 0:
		n.logger.Info("no --join and no data: bootstrapping a new one-member cluster")
		m, err = registry.Bootstrap(ctx, mc)
	default:
		return n.joinAsSpare(ctx)
	}
	if err != nil {
		return err
	}
	if m != nil {
		n.setMember(m)
	}
	return nil
}

// forcedMarker records in the data dir that --force-new-cluster was applied.
const forcedMarker = "forced-new-cluster"

// clearMemberData removes the member's data and what belongs to it (the
// forced-new-cluster marker): the member is gone for good.
func (n *Node) clearMemberData() error {
	if err := os.RemoveAll(n.cfg.etcdDir()); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(n.cfg.DataDir, forcedMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// setMember makes m the node's member and gossips its URLs. watchMember
// must follow once the registry client exists.
func (n *Node) setMember(m *registry.Member) {
	n.member.Store(m)
	if err := n.gossip.SetMeta(n.meta(n.role())); err != nil {
		n.logger.Warn("could not gossip the registry URLs", "err", err)
	}
}

// watchMember handles m stopping by itself.
func (n *Node) watchMember(m *registry.Member) {
	n.goBackground(func(ctx context.Context) {
		select {
		case err := <-m.Err():
			n.memberStopped(ctx, m, err)
		case <-ctx.Done():
		}
	})
}

// role is the node's registry role as it knows it.
func (n *Node) role() string {
	m := n.member.Load()
	switch {
	case m == nil:
		return api.RoleSpare
	case m.IsLearner():
		return api.RoleLearner
	}
	return api.RoleVoter
}

// memberStopped handles a member that stopped by itself. A member the
// cluster removed (the autopilot replaced it, or keeps the voter count odd)
// leaves the node a spare with its member data cleared; anything else is
// fatal.
func (n *Node) memberStopped(ctx context.Context, m *registry.Member, err error) {
	if n.leaving.Load() {
		return // removed by Leave: the node is stopping anyway
	}
	if !errors.Is(err, registry.ErrMemberStopped) {
		n.fail(fmt.Errorf("registry member failed: %w", err))
		return
	}
	m.Close()
	if rerr := n.clearIfRemoved(ctx); rerr != nil {
		n.fail(fmt.Errorf("registry member stopped: %w (%w)", err, rerr))
		return
	}
	n.member.CompareAndSwap(m, nil)
	n.useVoters()
	if err := n.gossip.SetMeta(n.meta(api.RoleSpare)); err != nil {
		n.logger.Warn("could not gossip the spare role", "err", err)
	}
	n.logger.Info("this node's member was removed from the registry: carrying on as a spare")
}

// clearIfRemoved asks the voters whether this node's member is still in the
// registry; if it is not, it clears the member data so the node can join
// afresh later. It waits (until ctx is done) for gossip to show a voter.
func (n *Node) clearIfRemoved(ctx context.Context) error {
	mc := n.memberConfig()
	peerURL := mc.PeerURL()
	var stillListed time.Time
	for {
		if voters := n.memberClientURLs(); len(voters) > 0 {
			cli, err := registry.NewClient(voters, n.clientTLS(), n.logger)
			if err == nil {
				// Linearizable: a lagging follower's view must not decide
				// whether this node's data is wiped.
				list, lerr := registry.MembersLinearizable(ctx, cli)
				cli.Close()
				if lerr == nil {
					listed := false
					for _, m := range list {
						if slices.Contains(m.PeerURLs, peerURL) {
							listed = true
							if stillListed.IsZero() {
								stillListed = time.Now()
							}
							if time.Since(stillListed) > 15*time.Second {
								return fmt.Errorf("the registry still lists member %x for this node", m.ID)
							}
						}
					}
					if !listed {
						n.logger.Warn("the registry no longer lists this node's member: clearing its member data", "dir", n.cfg.etcdDir())
						return n.clearMemberData()
					}
				}
			}
		}
		if err := sleep(ctx, time.Second); err != nil {
			return fmt.Errorf("could not reach a voter to check the membership: %w", err)
		}
	}
}

// joinAsSpare joins gossip through --join and waits until it shows a voter
// whose client URL the node can use, retrying with jittered backoff until
// --retry-join-timeout (forever when zero).
func (n *Node) joinAsSpare(ctx context.Context) error {
	ctx, deadline, cancel := n.joinDeadline(ctx)
	defer cancel()
	n.catchUpKeyring(ctx)
	if err := n.joinGossip(ctx, n.cfg.Join, deadline); err != nil {
		return err
	}
	return n.waitForVoters(ctx, deadline)
}

// joinDeadline bounds ctx by --retry-join-timeout, when set, and returns
// the deadline (zero when none).
func (n *Node) joinDeadline(ctx context.Context) (context.Context, time.Time, context.CancelFunc) {
	if n.cfg.RetryJoinTimeout <= 0 {
		return ctx, time.Time{}, func() {}
	}
	deadline := time.Now().Add(n.cfg.RetryJoinTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	return ctx, deadline, cancel
}

// waitForVoters waits until gossip shows a registry voter.
func (n *Node) waitForVoters(ctx context.Context, deadline time.Time) error {
	for attempt := 1; ; attempt++ {
		if len(n.memberClientURLs()) > 0 {
			n.logger.Info("joined the cluster as a spare; the autopilot promotes spares when voters are needed", "voters", n.memberClientURLs())
			return nil
		}
		if attempt%20 == 1 {
			n.logger.Warn("no node in the gossip pool runs a registry member yet; waiting", "attempt", attempt)
		}
		select {
		case <-n.gossip.Changed():
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return fmt.Errorf("%w after --retry-join-timeout %s: no node in the gossip pool runs a registry member", ErrJoinTimeout, n.cfg.RetryJoinTimeout)
			}
			return ctx.Err()
		}
	}
}

// registryEndpoints are the client URLs the node's registry client uses: its
// own member's while it votes, the voters' otherwise (a learner serves
// neither writes nor watches).
func (n *Node) registryEndpoints() []string {
	if m := n.member.Load(); m != nil && !m.IsLearner() {
		return []string{m.ClientURL()}
	}
	return n.memberClientURLs()
}

// useVoters points the registry client at the current endpoints.
func (n *Node) useVoters() {
	eps := n.registryEndpoints()
	if len(eps) == 0 || n.client == nil {
		return
	}
	cur := n.client.Endpoints()
	if !slices.Equal(sorted(cur), sorted(eps)) {
		n.epMu.Lock()
		n.client.SetEndpoints(eps...)
		n.epMu.Unlock()
	}
	if voters := n.memberClientURLs(); len(voters) > 0 {
		key := strings.Join(voters, ",")
		if last := n.savedVoters.Load(); last == nil || *last != key {
			if err := n.dir.saveVoters(voters); err != nil {
				n.logger.Warn("could not record the voters' URLs in the data dir", "err", err)
			} else {
				n.savedVoters.Store(&key)
			}
		}
	}
}

// catchUpKeyring reads the cluster's gossip keyring from the voters this
// spare saw last, before it rejoins gossip: a spare that was down during a
// key rotation holds only retired keys and could not gossip its way back.
func (n *Node) catchUpKeyring(ctx context.Context) {
	voters := n.dir.loadVoters()
	if n.store.Load() == nil || len(voters) == 0 {
		return
	}
	cli, err := registry.NewClient(voters, n.clientTLS(), n.logger)
	if err != nil {
		return
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, _, err := registry.NewSecrets(cli).Get(cctx, secretKeyring)
	if err != nil {
		n.logger.Info("could not read the cluster's gossip keyring before rejoining; using this node's", "err", err)
		return
	}
	var kr secure.Keyring
	if err := json.Unmarshal(v, &kr); err != nil {
		return
	}
	n.applyKeyring(kr)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// followRole keeps the node's use of the registry in step with its role,
// once a second, on every gossip change, and when the autopilot's
// designation changes (a watch):
//   - a spare follows the voters' client URLs and, when the autopilot has
//     designated it, joins the registry (learner, catch up, promote);
//   - a learner (a node that stopped between joining and promotion) keeps
//     asking the voters to promote it;
//   - the gossiped role follows.
func (n *Node) followRole(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	designated := registry.WatchDesignation(ctx, n.client)
	// The registry is read (the designation, the force-left names) on the
	// ticker and when the designation changes, not on every change of the
	// gossip view: with 25 nodes forming, that was hundreds of reads a
	// second from the spares.
	read := true
	for {
		changed := n.gossip.Changed()
		m := n.member.Load()
		switch {
		case m == nil && read:
			n.joinIfDesignated(ctx)
		case m == nil:
		case m.IsLearner():
			if voters := n.memberClientURLs(); len(voters) > 0 {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := m.PromoteSelf(pctx, voters)
				cancel()
				if err != nil && ctx.Err() == nil {
					n.logger.Warn("this member is a learner and cannot be promoted yet; retrying", "voters", voters, "err", err)
				}
			}
		}
		n.useVoters()
		if read {
			n.forgetForceLeft(ctx)
		}
		if role := n.role(); n.gossip.LocalMeta().Role != role {
			if err := n.gossip.SetMeta(n.meta(role)); err != nil {
				n.logger.Warn("could not gossip the registry role", "err", err)
			}
		}
		read = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			read = true
		case <-designated:
			read = true
		case <-changed:
		}
	}
}

// joinIfDesignated joins the registry when the autopilot has designated
// this spare.
func (n *Node) joinIfDesignated(ctx context.Context) {
	if n.client == nil {
		return
	}
	d, _, err := registry.CurrentDesignation(ctx, n.client)
	if err != nil || d == nil || d.Name != n.cfg.Name || d.ID != n.dir.id {
		return
	}
	voters := n.memberClientURLs()
	if len(voters) == 0 {
		return
	}
	n.logger.Info("designated by the autopilot: joining the registry as a voter", "voters", voters)
	jctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := registry.JoinReplacing(jctx, n.memberConfig(), voters, d.Replace)
	if err != nil {
		if registry.HasData(n.cfg.etcdDir()) {
			// Started but not promoted: restart it as a learner and let
			// the learner path finish the promotion.
			m, err = registry.Restart(ctx, n.memberConfig())
		}
		if err != nil {
			n.logger.Warn("could not join the registry; the autopilot will designate again", "err", err)
			return
		}
	}
	n.setMember(m)
	n.watchMember(m)
	n.useVoters()
	n.logger.Info("this node is now a registry voter", "member_id", fmt.Sprintf("%x", m.ID()))
}

// memberClientURLs are the client URLs of alive gossip peers that run a
// voting registry member.
func (n *Node) memberClientURLs() []string {
	var urls []string
	for _, g := range n.gossip.Nodes() {
		if g.Name != n.cfg.Name && g.Status == gossip.StatusAlive && g.Meta.ClientURL != "" && g.Meta.Role != api.RoleLearner {
			urls = append(urls, g.Meta.ClientURL)
		}
	}
	slices.Sort(urls)
	return urls
}

// registryMembers is registry.Members through the node's client, and
// reachable is registry.Reachable: both dial one endpoint (Status), and
// etcd's client reads its endpoint list without its lock when it dials
// (client/v3 v3.7.3, Client.dial), so they hold epMu against useVoters'
// SetEndpoints (a data race the race detector found).
func (n *Node) registryMembers(ctx context.Context) ([]registry.MemberInfo, uint64, error) {
	n.epMu.RLock()
	defer n.epMu.RUnlock()
	return registry.Members(ctx, n.client)
}

func (n *Node) reachable(ctx context.Context, clientURL string) bool {
	n.epMu.RLock()
	defer n.epMu.RUnlock()
	return registry.Reachable(ctx, n.client, clientURL, time.Second)
}
