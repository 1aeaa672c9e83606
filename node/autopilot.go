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
//  2. removes a voter that has been dead (gossip says dead, or suspect and
//     silent for the whole timeout, AND its member does not answer) for
//     longer than --dead-voter-timeout, counted from when this node last
//     heard from it, if that leaves
//     at least 3 voters, or if a spare is there to take its place at once
//     (etcd refuses to add a member to 3 voters while one is down);
//  3. designates a spare when voters (dead ones within their timeout
//     included) are fewer than desired: min(--max-voters, the largest odd
//     number of healthy nodes);
//  4. turns a voter back into a spare when there have been more voters than
//     desired for a while, every voter is alive and at least 3 remain (an
//     even count, or one over --max-voters).
//
// It also removes a learner that sits with no designation pending (its
// joiner died mid-join), which would block every later join.
//
// A kill or reboot that ends within the timeout changes nothing.
func (n *Node) autopilot(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	st := newAutopilotState()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := n.member.Load()
		if m == nil || m.IsLearner() || m.LeaderID() != m.ID() {
			st = newAutopilotState() // a new leader starts from scratch
			continue
		}
		if err := n.autopilotStep(ctx, m, st); err != nil && ctx.Err() == nil {
			n.logger.Warn("autopilot", "err", err)
		}
	}
}

// autopilotState is what the leader remembers between steps.
type autopilotState struct {
	// deadSince is when each voter was first seen dead.
	deadSince map[uint64]time.Time
	// learnerSince is when each learner was first seen with no
	// designation pending.
	learnerSince map[uint64]time.Time
	// failed holds spares (by node ID) whose designation did not end in a
	// promotion, and when; they are tried last for a while.
	failed map[string]time.Time
	// overSince is since when there have been more voters than desired.
	overSince time.Time
}

func newAutopilotState() *autopilotState {
	return &autopilotState{deadSince: map[uint64]time.Time{}, learnerSince: map[uint64]time.Time{}, failed: map[string]time.Time{}}
}

// Timings of the autopilot's patience.
const (
	// learnerGrace is how long a learner may sit with no designation
	// pending (its joiner died mid-join) before it is removed: it would
	// block every later join.
	learnerGrace = 30 * time.Second
	// demoteAfter is how long voters must have been over the desired count
	// before one is turned into a spare, so a brief suspicion of one node
	// does not churn the membership.
	demoteAfter = 30 * time.Second
	// failedBackoff is how long a spare whose promotion failed is passed
	// over in favour of others.
	failedBackoff = 5 * time.Minute
)

// desiredVoters is min(maxVoters, the largest odd number <= healthy).
func desiredVoters(maxVoters, healthy int) int {
	d := min(maxVoters, healthy)
	if d%2 == 0 {
		d--
	}
	return max(d, 1)
}

func (n *Node) autopilotStep(ctx context.Context, self *registry.Member, st *autopilotState) error {
	deadSince := st.deadSince
	if !registry.HasQuorum(ctx, n.client) {
		return nil // never act without quorum
	}
	members, _, err := n.registryMembers(ctx)
	if err != nil {
		return err
	}
	view := map[string]gossip.Node{}
	healthy := 0
	for _, g := range n.gossip.Nodes() {
		view[g.Name] = g
		// A suspect node is not counted out: suspicion alone must not
		// shrink the desired voter count.
		if g.Status == gossip.StatusAlive || g.Status == gossip.StatusSuspect {
			healthy++
		}
	}
	inRegistry := map[string]bool{}
	var voters, learners []registry.MemberInfo
	for _, mem := range members {
		inRegistry[mem.Name] = true
		if mem.IsLearner {
			learners = append(learners, mem)
			continue
		}
		voters = append(voters, mem)
	}
	slices.SortFunc(voters, func(a, b registry.MemberInfo) int { return cmpString(a.Name, b.Name) })

	// Dead voters: gone from gossip's view of the living, and not
	// answering on their client URL.
	var expired []registry.MemberInfo
	stale := map[string]uint64{} // rebuilt node name -> its old member
	for _, v := range voters {
		g, known := view[v.Name]
		if known && g.Status == gossip.StatusAlive && g.Meta.Role == api.RoleSpare && v.ID != self.ID() &&
			!(len(v.ClientURLs) > 0 && n.reachable(ctx, v.ClientURLs[0])) {
			// The node of this name is alive, runs no member, and the
			// member does not answer: the node was rebuilt with new data
			// and its old member will never come back. (A spare promoted a
			// moment ago still gossips "spare", but its member answers.)
			stale[v.Name] = v.ID
			expired = append(expired, v)
			continue
		}
		// Suspect counts as gone once it has been silent for the whole
		// timeout: at 25 nodes gossip takes 8 s or more to call a node
		// dead, which would otherwise come on top of a short timeout.
		gone := !known || g.Status == gossip.StatusDead || g.Status == gossip.StatusLeft ||
			(g.Status == gossip.StatusSuspect && !g.LastHeard.IsZero() && time.Since(g.LastHeard) > n.cfg.DeadVoterTimeout)
		if v.ID == self.ID() || !gone || (len(v.ClientURLs) > 0 && n.reachable(ctx, v.ClientURLs[0])) {
			delete(deadSince, v.ID)
			continue
		}
		since, seen := deadSince[v.ID]
		if !seen {
			// Dead since this node last heard from it (gossip takes a few
			// seconds to call a silent node dead; the outage began then).
			since = time.Now()
			if known && !g.LastHeard.IsZero() && g.LastHeard.Before(since) {
				since = g.LastHeard
			}
			deadSince[v.ID] = since
			n.logger.Warn("autopilot: a voter is dead; it is replaced if it stays dead", "node", v.Name,
				"silent_for", time.Since(since).Round(time.Millisecond), "timeout", n.cfg.DeadVoterTimeout)
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
	// Spares whose promotion failed lately come last; then by name.
	recentlyFailed := func(g gossip.Node) bool {
		at, ok := st.failed[g.Meta.ID]
		return ok && time.Since(at) < failedBackoff
	}
	slices.SortFunc(spares, func(a, b gossip.Node) int {
		if fa, fb := recentlyFailed(a), recentlyFailed(b); fa != fb {
			if fa {
				return 1
			}
			return -1
		}
		return cmpString(a.Name, b.Name)
	})
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
			if err := registry.ClearDesignation(ctx, n.client, rev); err != nil {
				return err
			}
			d = nil // and on to the next change, in this same step
		case !ok || g.Status != gossip.StatusAlive || g.Meta.ID != d.ID || time.Since(d.At) > 2*time.Minute:
			n.logger.Warn("autopilot: the designated spare did not join; choosing again", "node", d.Name)
			st.failed[d.ID] = time.Now()
			return registry.ClearDesignation(ctx, n.client, rev)
		}
		if d != nil {
			clear(st.learnerSince)
			return nil
		}
	}
	if len(learners) > 0 {
		// No designation is pending, so no join should be under way: a
		// learner left by a joiner that died would block every later join.
		for _, l := range learners {
			since, seen := st.learnerSince[l.ID]
			if !seen {
				st.learnerSince[l.ID] = time.Now()
				continue
			}
			if time.Since(since) > learnerGrace {
				n.logger.Warn("autopilot: removing a learner left by an interrupted join", "node", l.Name, "member_id", fmt.Sprintf("%x", l.ID))
				delete(st.learnerSince, l.ID)
				return registry.RemoveMember(ctx, n.client, l.ID)
			}
		}
		return nil // a join may still be finishing
	}
	clear(st.learnerSince)

	// 2. Replace dead voters: remove one, and designate a spare in the
	// same step (3).
	removed := func(v registry.MemberInfo) {
		delete(deadSince, v.ID)
		gone := func(x registry.MemberInfo) bool { return x.ID == v.ID }
		voters = slices.DeleteFunc(voters, gone)
		expired = slices.DeleteFunc(expired, gone)
	}
replace:
	for _, v := range expired {
		if len(voters)-1 >= 3 {
			n.logger.Warn("autopilot: removing a voter dead for longer than --dead-voter-timeout", "node", v.Name,
				"member_id", fmt.Sprintf("%x", v.ID), "voters_after", len(voters)-1)
			if err := registry.RemoveMember(ctx, n.client, v.ID); err != nil {
				return err
			}
			removed(v)
			break replace
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
				removed(v)
				break replace
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
	allAlive := len(expired) == 0
	for _, v := range voters {
		if g, ok := view[v.Name]; !ok || g.Status != gossip.StatusAlive {
			allAlive = false
		}
	}
	if !(len(voters) > desired && len(voters)-1 >= 3 && allAlive) {
		st.overSince = time.Time{}
		return nil
	}
	if st.overSince.IsZero() {
		st.overSince = time.Now()
	}
	if time.Since(st.overSince) > demoteAfter {
		st.overSince = time.Time{}
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
