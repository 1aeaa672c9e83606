package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
)

// ErrExpectMismatch: a node in the gossip pool has another --bootstrap-expect.
var ErrExpectMismatch = errors.New("mismatched --bootstrap-expect")

// bootstrapExpect forms a new cluster with the other --bootstrap-expect
// nodes, or joins the cluster they already formed.
//
// Every fresh node with the same --bootstrap-expect N is a candidate. A node
// proposes the initial cluster only when it sees exactly N candidates; its
// proposal is a hash of their names and peer URLs, gossiped in its metadata.
// It starts its member with that initial cluster once every one of the N
// advertises the same proposal, so a cluster is only ever formed by nodes
// that all saw the same N. A node that finds a formed cluster whose proposal
// is its own is a founder that started late and starts too; any other node
// that finds a formed cluster joins it as a learner. More than N fresh
// candidates at once never propose: the operator is told to start the
// extras after formation.
func (n *Node) bootstrapExpect(ctx context.Context, mc registry.MemberConfig) (*registry.Member, error) {
	want := n.cfg.BootstrapExpect
	ctx, deadline, cancel := n.joinDeadline(ctx)
	defer cancel()
	// Gossip joins go on in the background: the nodes named in --join may
	// come up in any order.
	joinCtx, stopJoin := context.WithCancel(ctx)
	defer stopJoin()
	joined := make(chan error, 1)
	go func() { joined <- n.joinGossip(joinCtx, n.cfg.Join, deadline) }()

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastLog := time.Time{}
	for {
		changed := n.gossip.Changed()
		d, err := n.bootstrapDecision(want)
		if err != nil {
			return nil, err
		}
		switch d.action {
		case actionAdmit:
			// A cluster has formed: be admitted by it (certificate and
			// keyring) before reading its member list.
			if err := n.admit(ctx, d.via, deadline); err != nil {
				return nil, err
			}
			n.startSecured()
			continue
		case actionStart:
			// Gossip the proposal before anything else: the founders still
			// deciding wait for this one to agree, and the first founder
			// creates the CA that this one is admitted with only once all
			// agree. A node that saw the others agree on its first look
			// has gossiped nothing yet.
			n.gossipProposal(d.proposal)
			if err := n.founderIdentity(ctx, d, deadline); err != nil {
				return nil, err
			}
			n.startSecured()
			n.logger.Info("bootstrap: every expected node agrees; forming the cluster", "members", d.names, "proposal", d.proposal)
			if err := n.dir.saveProposal(d.proposal); err != nil {
				return nil, fmt.Errorf("--data-dir: record the bootstrap proposal: %w", err)
			}
			return registry.BootstrapCluster(ctx, mc, d.initial, "herd-"+d.proposal)
		case actionJoin:
			n.logger.Info("bootstrap: a cluster has already formed; joining it as a spare", "formed_by", d.names)
			stopJoin()
			if joined != nil {
				<-joined
			}
			return nil, n.waitForVoters(ctx, deadline)
		}
		n.gossipProposal(d.proposal)
		if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			n.logger.Info("bootstrap: waiting for the expected nodes", "expect", want, "reason", d.reason, "seen", d.names)
		}
		select {
		case err := <-joined:
			if err != nil {
				return nil, err
			}
			joined = nil // joined: keep deciding
		case <-changed:
		case <-tick.C:
		case <-ctx.Done():
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return nil, fmt.Errorf("%w after --retry-join-timeout %s: bootstrap-expect %d: %s (seen: %s)",
					ErrJoinTimeout, n.cfg.RetryJoinTimeout, want, d.reason, strings.Join(d.names, ", "))
			}
			return nil, ctx.Err()
		}
	}
}

// gossipProposal puts p in this node's gossip metadata if it is not there.
func (n *Node) gossipProposal(p string) {
	if n.proposal() == p {
		return
	}
	n.bootstrapProposal.Store(&p)
	if err := n.gossip.SetMeta(n.meta("")); err != nil {
		n.logger.Warn("could not gossip the bootstrap proposal", "err", err)
	}
}

type bootstrapAction int

const (
	actionWait bootstrapAction = iota
	actionStart
	actionJoin
	// actionAdmit: the node has no identity and a cluster has formed: it is
	// admitted through the join exchange first.
	actionAdmit
)

type decision struct {
	action   bootstrapAction
	proposal string // this node's proposal, "" when it proposes nothing
	initial  string // the initial cluster, for actionStart
	names    []string
	reason   string
	// via are the gossip addresses to be admitted through (actionAdmit),
	// or of the founder that creates the cluster's identity (actionStart).
	via []string
}

// bootstrapDecision looks at the gossip view once and says what to do.
func (n *Node) bootstrapDecision(want int) (decision, error) {
	var cands, formed []gossip.Node
	for _, g := range n.gossip.Nodes() {
		if g.Status != gossip.StatusAlive {
			continue
		}
		if g.Meta.Expect != 0 && g.Meta.Expect != want {
			return decision{}, fmt.Errorf("%w: node %s (%s) has --bootstrap-expect %d, this node %d; give every node the same value",
				ErrExpectMismatch, g.Name, g.Addr, g.Meta.Expect, want)
		}
		if g.Meta.ClientURL != "" {
			formed = append(formed, g)
		}
		if g.Meta.Expect == want {
			cands = append(cands, g)
		}
	}
	slices.SortFunc(cands, func(a, b gossip.Node) int { return strings.Compare(a.Name, b.Name) })
	names := make([]string, 0, len(cands))
	parts := make([]string, 0, len(cands))
	for _, c := range cands {
		names = append(names, c.Name)
		parts = append(parts, c.Name+"="+c.Meta.PeerURL)
	}
	initial := strings.Join(parts, ",")
	sum := sha256.Sum256([]byte(initial))
	proposal := hex.EncodeToString(sum[:8])

	if len(formed) > 0 {
		if n.store.Load() == nil && !n.cfg.Insecure {
			var via []string
			for _, f := range formed {
				via = append(via, f.Addr)
			}
			return decision{action: actionAdmit, via: via, names: names}, nil
		}
		return n.lateFounder(formed)
	}
	switch {
	case len(cands) < want:
		return decision{names: names, reason: fmt.Sprintf("%d of %d nodes with --bootstrap-expect %d seen", len(cands), want, want)}, nil
	case len(cands) > want:
		return decision{names: names, reason: fmt.Sprintf("%d fresh nodes with --bootstrap-expect %d are waiting, more than %d: stop the extra ones until the cluster has formed (they then join it)",
			len(cands), want, want)}, nil
	}
	for _, c := range cands {
		if c.Name != n.cfg.Name && c.Meta.Proposal != proposal {
			return decision{proposal: proposal, names: names, reason: "waiting for " + c.Name + " to agree on the same " + fmt.Sprint(want) + " nodes"}, nil
		}
	}
	return decision{action: actionStart, proposal: proposal, initial: initial, names: names, via: []string{cands[0].Addr}}, nil
}

// founderIdentity gives a founder its identity before it starts its member:
// the first founder by name creates the cluster's CA (with the token's
// secret and the formation's gossip key), the others are admitted by it.
// So the founders agree on one CA as they agree on one initial cluster. A
// founder that already holds an identity (it was admitted, then restarted
// before its member started) keeps it.
func (n *Node) founderIdentity(ctx context.Context, d decision, deadline time.Time) error {
	if n.store.Load() != nil || n.cfg.Insecure {
		return nil
	}
	if d.names[0] == n.cfg.Name {
		n.logger.Info("bootstrap: this node is the first founder by name: it creates the cluster's CA")
		return n.createIdentity(n.cfg.token, false)
	}
	n.logger.Info("bootstrap: being admitted by the first founder", "founder", d.names[0])
	return n.admit(ctx, d.via, deadline)
}

// lateFounder decides, once a cluster has formed, whether this node is one
// of its founders that has not started yet, from the registry's own member
// list (not from gossip, which may have changed since the founders agreed):
//   - a member with this node's peer URL that never started: this node is
//     that founder and starts with the cluster's initial membership;
//   - a started member with this node's peer URL: this node was rebuilt with
//     new data; it joins as a spare and replaces its stale member;
//   - no such member: the cluster formed without this node; it joins as a
//     spare.
func (n *Node) lateFounder(formed []gossip.Node) (decision, error) {
	var names []string
	var urls []string
	for _, f := range formed {
		names = append(names, f.Name)
		urls = append(urls, f.Meta.ClientURL)
	}
	cli, err := registry.NewClient(urls, n.clientTLS(), n.logger)
	if err != nil {
		return decision{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	members, _, err := registry.Members(ctx, cli)
	if err != nil {
		return decision{names: names, reason: "a cluster has formed but its member list cannot be read yet: " + err.Error()}, nil
	}
	mc := n.memberConfig()
	peerURL := mc.PeerURL()
	byPeer := map[string]string{}
	for _, g := range n.gossip.Nodes() {
		byPeer[g.Meta.PeerURL] = g.Name
	}
	var mine *registry.MemberInfo
	var parts []string
	for i, m := range members {
		name := m.Name
		if slices.Contains(m.PeerURLs, peerURL) {
			mine = &members[i]
			if name == "" {
				name = n.cfg.Name
			}
		}
		if name == "" && len(m.PeerURLs) > 0 {
			name = byPeer[m.PeerURLs[0]]
		}
		if name == "" {
			return decision{names: names, reason: "waiting to learn the name of founder " + strings.Join(m.PeerURLs, ",")}, nil
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	if mine == nil || mine.Name != "" {
		return decision{action: actionJoin, names: names}, nil
	}
	token := ""
	for _, f := range formed {
		if f.Meta.Proposal != "" {
			token = f.Meta.Proposal
			break
		}
	}
	if token == "" {
		return decision{names: names, reason: "waiting for the founders' proposal"}, nil
	}
	return decision{action: actionStart, proposal: token, initial: strings.Join(parts, ","), names: names}, nil
}
