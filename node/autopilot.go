package node

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
)

// autopilot keeps the registry's voters at the desired count, one change at
// a time. Only the node whose member leads the registry acts, and only with
// quorum. Once a second it:
//  1. clears a finished or stale designation (one spare is promoted at a
//     time);
//  2. removes a voter that has been dead (gossip says dead AND its member
//     does not answer) for longer than --dead-voter-timeout, if that leaves
//     at least 3 voters, or if a spare is there to take its place at once
//     (etcd refuses to add a member to 3 voters while one is down);
//  3. designates a spare when voters (dead ones within their timeout
//     included) are fewer than desired: min(--max-voters, the largest odd
//     number of healthy nodes);
//  4. turns a voter back into a spare when there are more voters than
//     desired, every voter is healthy and at least 3 remain (an even count,
//     or one over --max-voters).
//
// A kill or reboot that ends within the timeout changes nothing.
func (n *Node) autopilot(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	deadSince := map[uint64]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := n.member.Load()
		if m == nil || m.IsLearner() || m.LeaderID() != m.ID() {
			clear(deadSince)
			continue
		}
		if err := n.autopilotStep(ctx, m, deadSince); err != nil && ctx.Err() == nil {
			n.logger.Warn("autopilot", "err", err)
		}
	}
}

// desiredVoters is min(maxVoters, the largest odd number <= healthy).
func desiredVoters(maxVoters, healthy int) int {
	d := min(maxVoters, healthy)
	if d%2 == 0 {
		d--
	}
	return max(d, 1)
}

func (n *Node) autopilotStep(ctx context.Context, self *registry.Member, deadSince map[uint64]time.Time) error {
	if !registry.HasQuorum(ctx, n.client) {
		return nil // never act without quorum
	}
	members, _, err := registry.Members(ctx, n.client)
	if err != nil {
		return err
	}
	view := map[string]gossip.Node{}
	healthy := 0
	for _, g := range n.gossip.Nodes() {
		view[g.Name] = g
		if g.Status == gossip.StatusAlive {
			healthy++
		}
	}
	inRegistry := map[string]bool{}
	var voters []registry.MemberInfo
	learners := 0
	for _, mem := range members {
		inRegistry[mem.Name] = true
		if mem.IsLearner {
			learners++
			continue
		}
		voters = append(voters, mem)
	}
	slices.SortFunc(voters, func(a, b registry.MemberInfo) int { return cmpString(a.Name, b.Name) })

	// Dead voters: gone from gossip's view of the living, and not
	// answering on their client URL.
	var expired []registry.MemberInfo
	stale := map[string]uint64{} // rebuilt node name -> its old member
	alive := map[uint64]bool{}
	for _, v := range voters {
		g, known := view[v.Name]
		if known && g.Status == gossip.StatusAlive && g.Meta.Role == api.RoleSpare && v.ID != self.ID() {
			// The node of this name is alive and runs no member: it was
			// rebuilt with new data and its old member will never come
			// back. No need to wait for the timeout.
			stale[v.Name] = v.ID
			expired = append(expired, v)
			continue
		}
		gone := !known || g.Status == gossip.StatusDead || g.Status == gossip.StatusLeft
		if v.ID == self.ID() || !gone || (len(v.ClientURLs) > 0 && registry.Reachable(ctx, n.client, v.ClientURLs[0], time.Second)) {
			delete(deadSince, v.ID)
			if !gone {
				alive[v.ID] = true
			}
			continue
		}
		since, seen := deadSince[v.ID]
		if !seen {
			deadSince[v.ID] = time.Now()
			n.logger.Warn("autopilot: a voter is dead; it is replaced if it stays dead", "node", v.Name, "timeout", n.cfg.DeadVoterTimeout)
			continue
		}
		if time.Since(since) > n.cfg.DeadVoterTimeout {
			expired = append(expired, v)
		}
	}
	for id := range deadSince {
		if !slices.ContainsFunc(voters, func(v registry.MemberInfo) bool { return v.ID == id }) {
			delete(deadSince, id)
		}
	}

	var spares []gossip.Node
	for _, g := range view {
		if g.Status == gossip.StatusAlive && (!inRegistry[g.Name] || stale[g.Name] != 0) && g.Meta.ID != "" && g.Meta.Role == api.RoleSpare {
			spares = append(spares, g)
		}
	}
	slices.SortFunc(spares, func(a, b gossip.Node) int { return cmpString(a.Name, b.Name) })
	desired := desiredVoters(n.cfg.MaxVoters, healthy)

	// 1. One designation at a time.
	d, rev, err := registry.CurrentDesignation(ctx, n.client)
	if err != nil {
		return err
	}
	if d != nil {
		g, ok := view[d.Name]
		switch {
		case slices.ContainsFunc(voters, func(v registry.MemberInfo) bool { return v.Name == d.Name }):
			n.logger.Info("autopilot: spare promoted to voter", "node", d.Name)
			return registry.ClearDesignation(ctx, n.client, rev)
		case !ok || g.Status != gossip.StatusAlive || g.Meta.ID != d.ID || time.Since(d.At) > 2*time.Minute:
			n.logger.Warn("autopilot: the designated spare did not join; choosing again", "node", d.Name)
			return registry.ClearDesignation(ctx, n.client, rev)
		}
		return nil
	}
	if learners > 0 {
		return nil // a join is in progress
	}

	// 2. Replace dead voters.
	for _, v := range expired {
		if len(voters)-1 >= 3 {
			n.logger.Warn("autopilot: removing a voter dead for longer than --dead-voter-timeout", "node", v.Name,
				"member_id", fmt.Sprintf("%x", v.ID), "voters_after", len(voters)-1)
			if err := registry.RemoveMember(ctx, n.client, v.ID); err != nil {
				return err
			}
			delete(deadSince, v.ID)
			return nil
		}
		// Fewer than 4 voters. etcd (3.7) refuses to add any member, even
		// a learner, while a voter of a 3-voter cluster is down (the add
		// check counts the newcomer as one more voter to reach), so the
		// dead voter must go first. Do that only when a spare is there to
		// take its place at once: with none, 3 voters with one dead keep
		// their quorum, 2 would not tolerate another loss.
		for _, sp := range spares {
			if stale[sp.Name] == v.ID {
				// The rebuilt node removes its own stale member under the
				// join lock and joins in its place.
				return n.designateReplacing(ctx, sp, v.ID)
			}
		}
		for _, sp := range spares {
			if stale[sp.Name] == 0 {
				n.logger.Warn("autopilot: removing a dead voter so that a spare can take its place", "node", v.Name,
					"member_id", fmt.Sprintf("%x", v.ID), "spare", sp.Name)
				if err := registry.RemoveMember(ctx, n.client, v.ID); err != nil {
					return err
				}
				delete(deadSince, v.ID)
				return nil
			}
		}
	}

	// 3. Promote spares up to the desired count. Voters dead within their
	// timeout still count: a kill or reboot changes nothing by itself.
	if len(voters)-len(expired) < desired {
		for _, sp := range spares {
			if stale[sp.Name] == 0 {
				return n.designate(ctx, sp, fmt.Sprintf("%d voters, %d desired", len(voters)-len(expired), desired))
			}
		}
	}

	// 4. Keep the count odd and under --max-voters, by turning a healthy
	// voter (not this leader) back into a spare.
	if len(voters) > desired && len(voters)-1 >= 3 && len(alive) == len(voters) && len(expired) == 0 {
		for i := len(voters) - 1; i >= 0; i-- {
			v := voters[i]
			if v.ID == self.ID() {
				continue
			}
			n.logger.Info("autopilot: more voters than desired; making one a spare", "node", v.Name, "voters", len(voters), "desired", desired)
			return registry.RemoveMember(ctx, n.client, v.ID)
		}
	}
	return nil
}

func (n *Node) designate(ctx context.Context, g gossip.Node, why string) error {
	n.logger.Info("autopilot: promoting a spare", "node", g.Name, "why", why)
	return registry.Designate(ctx, n.client, registry.Designation{Name: g.Name, ID: g.Meta.ID, At: time.Now()})
}

func (n *Node) designateReplacing(ctx context.Context, g gossip.Node, stale uint64) error {
	n.logger.Info("autopilot: a rebuilt node replaces its stale member", "node", g.Name, "stale_member", fmt.Sprintf("%x", stale))
	return registry.Designate(ctx, n.client, registry.Designation{Name: g.Name, ID: g.Meta.ID, At: time.Now(), Replace: stale})
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
