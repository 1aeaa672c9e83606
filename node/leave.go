package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
)

// ErrLeft is delivered on Err after a successful Leave: the node is out of
// the cluster and stops; the process should exit 0.
var ErrLeft = errors.New("this node left the cluster")

// ErrUnsafe: the request would cost the registry its quorum.
var ErrUnsafe = errors.New("refused: it would cost the registry its quorum")

// Leave takes the node out of the cluster for good:
//  1. checks that the voters left behind keep a quorum (refuses otherwise);
//  2. revokes the lease: this node's services leave the registry; then
//     forgets the registrations it kept for its restarts;
//  3. hands the leadership over if this member holds it;
//  4. removes its own member;
//
// then stops the node (it leaves gossip, and Close clears the member data)
// by delivering ErrLeft on Err.
func (n *Node) Leave(ctx context.Context) error {
	if *n.phase.Load() != "running" || !n.leaving.CompareAndSwap(false, true) {
		return errors.New("the node is not running (or is already leaving)")
	}
	undo := true
	defer func() {
		if undo {
			n.leaving.Store(false)
		}
	}()
	m := n.member.Load()
	var others []registry.MemberInfo
	if m != nil {
		members, _, err := n.registryMembers(ctx)
		if err != nil {
			return err
		}
		answering := 0
		for _, x := range members {
			if x.ID == m.ID() || x.IsLearner {
				continue
			}
			others = append(others, x)
			if len(x.ClientURLs) > 0 && n.reachable(ctx, x.ClientURLs[0]) {
				answering++
			}
		}
		if len(others) == 0 && n.aliveOthers() > 0 {
			return fmt.Errorf("%w: this is the last voter and %d other nodes depend on it", ErrUnsafe, n.aliveOthers())
		}
		if need := len(others)/2 + 1; len(others) > 0 && answering < need {
			return fmt.Errorf("%w: %d voters would remain, of which %d answer; %d are needed", ErrUnsafe, len(others), answering, need)
		}
	}
	if err := n.registrar.Close(ctx); err != nil {
		n.fail(fmt.Errorf("leave: could not deregister this node's services (%w); stopping, the node registers them again when restarted", err))
		undo = false
		return fmt.Errorf("deregister this node's services: %w", err)
	}
	// From here on the lease is gone: a failure stops the node (a restart
	// registers its services again) rather than leave it running without.
	fail := func(err error) error {
		undo = false
		n.leaving.Store(false)
		n.fail(fmt.Errorf("leave failed after deregistering this node's services; stopping: %w", err))
		return err
	}
	// Gone for good: nothing of this node's is to come back at a restart.
	if err := registry.ForgetKept(ctx, n.client, n.cfg.Name); err != nil {
		return fail(err)
	}
	if m != nil && len(others) > 0 {
		if m.LeaderID() == m.ID() {
			for _, o := range others {
				if len(o.ClientURLs) > 0 && n.reachable(ctx, o.ClientURLs[0]) {
					if err := registry.MoveLeader(ctx, n.client, o.ID); err != nil {
						return fail(err)
					}
					n.logger.Info("leave: handed the registry leadership over", "to", o.Name)
					break
				}
			}
		}
		// Ask the other voters, not this member: it stops as soon as it
		// applies its own removal, which would lose the answer.
		var urls []string
		for _, o := range others {
			urls = append(urls, o.ClientURLs...)
		}
		cli, err := registry.NewClient(urls, n.clientTLS(), n.logger)
		if err != nil {
			return fail(err)
		}
		err = registry.RemoveMember(ctx, cli, m.ID())
		cli.Close()
		if err != nil {
			return fail(err)
		}
		n.logger.Info("leave: removed this node's member from the registry")
	}
	undo = false
	n.fail(ErrLeft)
	return nil
}

func (n *Node) aliveOthers() int {
	k := 0
	for _, g := range n.gossip.Nodes() {
		if g.Name != n.cfg.Name && g.Status == gossip.StatusAlive {
			k++
		}
	}
	return k
}

// ForceLeave removes a dead node: its registry member, if it has one, and
// its entry in every node's gossip view. A node that gossip still reports
// alive or suspect is refused: run leave on it instead.
func (n *Node) ForceLeave(ctx context.Context, name string) error {
	if name == n.cfg.Name {
		return errors.New("a node cannot force-leave itself; use leave")
	}
	known := false
	for _, g := range n.gossip.Nodes() {
		if g.Name == name {
			known = true
			if g.Status == gossip.StatusAlive || g.Status == gossip.StatusSuspect {
				return fmt.Errorf("node %s is %s: run leave on it instead", name, g.Status)
			}
		}
	}
	members, _, err := n.registryMembers(ctx)
	if err != nil {
		return err
	}
	removed := false
	for _, x := range members {
		if x.Name == name {
			if err := registry.RemoveMember(ctx, n.client, x.ID); err != nil {
				return err
			}
			removed = true
			n.logger.Info("force-leave: removed the member of a dead node", "node", name, "member_id", fmt.Sprintf("%x", x.ID))
		}
	}
	if !known && !removed {
		return fmt.Errorf("%w: no node named %s", errNoSuchNode, name)
	}
	if err := registry.MarkForceLeft(ctx, n.client, name); err != nil {
		return err
	}
	n.gossip.Forget(name)
	return nil
}

var errNoSuchNode = errors.New("not found")

// forgetForceLeft drops from the gossip view the nodes an operator removed
// with force-leave on any node.
func (n *Node) forgetForceLeft(ctx context.Context) {
	names, err := registry.ForceLeft(ctx, n.client)
	if err != nil {
		return
	}
	for _, name := range names {
		if n.gossip.Forget(name) {
			n.logger.Info("forgot a node removed with force-leave", "node", name)
		}
	}
}
