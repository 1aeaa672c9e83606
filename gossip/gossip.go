package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Status of a node in the gossip view.
const (
	StatusAlive   = "alive"
	StatusSuspect = "suspect"
	StatusDead    = "dead"
	StatusLeft    = "left"
)

// Node is one node of the view.
type Node struct {
	Name   string
	Addr   string // gossip host:port
	IP     string
	Port   int
	Meta   Meta
	Status string
	// Since is when Status last changed.
	Since time.Time
	// LastHeard is when this node last received a packet from it (zero for
	// itself): how long a dead node has really been gone.
	LastHeard time.Time
}

// entry is the view's record of a node.
type entry struct {
	node      Node
	lastHeard time.Time
}

// Gossip is a node's membership in the cluster's gossip pool.
type Gossip struct {
	cfg    Config
	logger *slog.Logger
	ml     *memberlist.Memberlist
	tr     *observingTransport

	meta atomic.Pointer[[]byte]

	mu    sync.Mutex
	nodes map[string]*entry // by name
	// heard is the last packet time by gossip address.
	heard map[string]time.Time
	// conflicts holds addresses of live nodes that use this node's name.
	conflicts []string

	// statuses is the lock-free snapshot read by Status.
	statuses atomic.Pointer[map[string]string]

	changedMu sync.Mutex
	changed   chan struct{}

	// keyring is memberlist's keyring, nil for plaintext gossip.
	keyring *memberlist.Keyring
	// undecryptable counts messages dropped because no key decrypted them.
	undecryptable atomic.Uint64

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// JoinListener is the listener of the connections to the gossip port that
// open with TLS: the join exchange. Connections nobody accepts within a few
// seconds are closed. It closes when gossip does.
func (g *Gossip) JoinListener() net.Listener { return g.tr.joins }

// Undecryptable is how many gossip messages were dropped because none of
// the keyring's keys decrypted them (plaintext, or another key).
func (g *Gossip) Undecryptable() uint64 { return g.undecryptable.Load() }

// ErrNoKeyring: keyring operations on plaintext gossip.
var ErrNoKeyring = errors.New("gossip is not encrypted: no keyring")

// Keyring returns the primary key and every key of the keyring.
func (g *Gossip) Keyring() (primary []byte, keys [][]byte, err error) {
	kr := g.keyring
	if kr == nil {
		return nil, nil, ErrNoKeyring
	}
	return kr.GetPrimaryKey(), kr.GetKeys(), nil
}

// SetKeyring makes the keyring hold exactly keys with primary as the
// primary: new keys are added first, then the primary is switched, then the
// keys no longer listed are removed, so the node never stops reading what
// its peers send during a rotation.
func (g *Gossip) SetKeyring(primary []byte, keys [][]byte) error {
	kr := g.keyring
	if kr == nil {
		return ErrNoKeyring
	}
	if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, primary) }) {
		return errors.New("gossip: the primary key is not one of the keys")
	}
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("gossip: add key: %w", err)
		}
	}
	if err := kr.UseKey(primary); err != nil {
		return fmt.Errorf("gossip: use key: %w", err)
	}
	for _, k := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(x []byte) bool { return bytes.Equal(x, k) }) {
			if err := kr.RemoveKey(k); err != nil {
				return fmt.Errorf("gossip: remove key: %w", err)
			}
		}
	}
	return nil
}

// New binds the gossip listeners and starts memberlist with meta as this
// node's metadata. The node is alone until Join.
func New(cfg Config, meta Meta) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "gossip")
	g := &Gossip{
		cfg:     cfg,
		logger:  logger,
		nodes:   map[string]*entry{},
		heard:   map[string]time.Time{},
		changed: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	empty := map[string]string{}
	g.statuses.Store(&empty)
	if err := g.setMeta(meta); err != nil {
		return nil, err
	}

	mlLogger := log.New(&logWriter{logger: logger, undecryptable: &g.undecryptable}, "", 0)
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{cfg.BindIP},
		BindPort:  cfg.BindPort,
		Logger:    mlLogger,
	})
	if err != nil {
		return nil, fmt.Errorf("gossip: listen on %s: %w", net.JoinHostPort(cfg.BindIP, fmt.Sprint(cfg.BindPort)), err)
	}
	g.tr = newObservingTransport(nt, g.heardFrom)

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindIP
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.advertise()
	mc.AdvertisePort = cfg.BindPort
	mc.ProbeInterval = cfg.ProbeInterval
	mc.Transport = g.tr
	mc.Delegate = (*delegate)(g)
	mc.Events = (*events)(g)
	mc.Conflict = (*conflicts)(g)
	mc.Ping = (*pings)(g)
	mc.Logger = mlLogger
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.PrimaryKey)
		if err != nil {
			g.tr.Shutdown()
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
		mc.Keyring = kr
		g.keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	// A node rebuilt with the same name may take over a dead node's entry.
	mc.DeadNodeReclaimTime = 10 * time.Second
	ml, err := memberlist.Create(mc)
	if err != nil {
		g.tr.Shutdown()
		return nil, fmt.Errorf("gossip: start memberlist: %w", err)
	}
	g.ml = ml
	g.wg.Add(1)
	go g.refreshLoop()
	if cfg.ReconnectInterval > 0 {
		g.wg.Add(1)
		go g.reconnectLoop()
	}
	return g, nil
}

// LocalAddr is the gossip address peers use for this node.
func (g *Gossip) LocalAddr() string {
	return net.JoinHostPort(g.cfg.advertise(), fmt.Sprint(g.cfg.BindPort))
}

func (g *Gossip) setMeta(m Meta) error {
	b, err := m.encode()
	if err != nil {
		return err
	}
	g.meta.Store(&b)
	return nil
}

// SetMeta replaces this node's metadata and gossips it.
func (g *Gossip) SetMeta(m Meta) error {
	if err := g.setMeta(m); err != nil {
		return err
	}
	if err := g.ml.UpdateNode(5 * time.Second); err != nil {
		return fmt.Errorf("gossip: update metadata: %w", err)
	}
	return nil
}

// LocalMeta returns this node's metadata.
func (g *Gossip) LocalMeta() Meta {
	m, _ := decodeMeta(*g.meta.Load())
	return m
}

// Nodes returns every node in the view, this one included, sorted by name.
func (g *Gossip) Nodes() []Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Node, 0, len(g.nodes))
	for name, e := range g.nodes {
		n := e.node
		if name != g.cfg.Name {
			n.LastHeard = e.lastHeard
			if h, ok := g.heard[n.Addr]; ok && h.After(n.LastHeard) {
				n.LastHeard = h
			}
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// NodeStatus returns a node's gossip status, "" when the node is unknown. It
// reads a snapshot without locking and is safe on the request path.
func (g *Gossip) NodeStatus(name string) string {
	return (*g.statuses.Load())[name]
}

// Changed returns a channel closed at the next change of the view.
func (g *Gossip) Changed() <-chan struct{} {
	g.changedMu.Lock()
	defer g.changedMu.Unlock()
	return g.changed
}

// NameConflict returns the addresses of live nodes that use this node's
// name, as memberlist reported them.
func (g *Gossip) NameConflict() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.conflicts...)
}

// Forget drops a dead or left node from the view (an operator's
// force-leave). It reports whether it did; an alive or suspect node is kept.
// A node that comes back is added again.
func (g *Gossip) Forget(name string) bool {
	g.mu.Lock()
	e, ok := g.nodes[name]
	if !ok || name == g.cfg.Name || (e.node.Status != StatusDead && e.node.Status != StatusLeft) {
		g.mu.Unlock()
		return false
	}
	delete(g.nodes, name)
	delete(g.heard, e.node.Addr)
	g.mu.Unlock()
	g.publish()
	return true
}

// heardFrom records a packet from addr.
func (g *Gossip) heardFrom(addr string, at time.Time) {
	g.mu.Lock()
	g.heard[addr] = at
	g.mu.Unlock()
}

// heardFromNode records a probe of the named node that it acknowledged
// (which also covers a node whose packets come from another address than
// the one it advertises).
func (g *Gossip) heardFromNode(name string, at time.Time) {
	g.mu.Lock()
	if e, ok := g.nodes[name]; ok && at.After(e.lastHeard) {
		e.lastHeard = at
	}
	g.mu.Unlock()
}

// refreshLoop recomputes suspect statuses from silence and reaps old dead
// nodes.
func (g *Gossip) refreshLoop() {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.ProbeInterval / 4)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			g.mu.Lock()
			changed := g.refreshLocked(time.Now())
			g.mu.Unlock()
			if changed {
				g.publish()
			}
		}
	}
}

// reconnectLoop tries, every ReconnectInterval, to rejoin one node (at
// random) that the view holds dead but that has not left, the way Serf's
// reconnector does. A node that was cut off by a partition is dead to the
// others and they to it; memberlist itself never dials a dead node again,
// so after the partition heals this is what merges the two sides. The TCP
// probe first (bounded by the interval) keeps a black-holed address
// from holding up Close for memberlist's 10s TCP timeout.
func (g *Gossip) reconnectLoop() {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		var dead []Node
		g.mu.Lock()
		for _, e := range g.nodes {
			if e.node.Status == StatusDead && e.node.Name != g.cfg.Name {
				dead = append(dead, e.node)
			}
		}
		g.mu.Unlock()
		if len(dead) == 0 {
			continue
		}
		n := dead[rand.IntN(len(dead))]
		pctx, pcancel := context.WithTimeout(context.Background(), g.cfg.ReconnectInterval)
		err := probeTCP(pctx, n.Addr)
		pcancel()
		if err != nil {
			continue
		}
		if _, err := g.ml.Join([]string{n.Addr}); err != nil {
			g.logger.Debug("reconnecting to a dead node failed", "node", n.Name, "addr", n.Addr, "err", oneLine(err))
			continue
		}
		g.logger.Info("reconnected to a node seen dead", "node", n.Name, "addr", n.Addr)
	}
}

// suspectAfter is how long a node may be silent before it is suspect.
// memberlist probes the other live nodes in a shuffled round, so two probes
// of the same node can be up to 2*others-1 intervals apart; on a quiet
// cluster a probe and its ack are all we hear from a healthy node.
func (g *Gossip) suspectAfterLocked() time.Duration {
	others := 0
	for name, e := range g.nodes {
		if name != g.cfg.Name && (e.node.Status == StatusAlive || e.node.Status == StatusSuspect) {
			others++
		}
	}
	others = max(others, 1)
	return time.Duration(2*others-1)*g.cfg.ProbeInterval + g.cfg.SuspectMargin
}

func (g *Gossip) refreshLocked(now time.Time) bool {
	changed := false
	limit := g.suspectAfterLocked()
	for name, e := range g.nodes {
		if name == g.cfg.Name {
			continue
		}
		last := e.lastHeard
		if h, ok := g.heard[e.node.Addr]; ok && h.After(last) {
			last = h
			e.lastHeard = h
		}
		switch e.node.Status {
		case StatusAlive:
			if now.Sub(last) > limit {
				e.node.Status, e.node.Since = StatusSuspect, now
				changed = true
				g.logger.Info("node is suspect: nothing heard from it", "node", name, "silent_for", now.Sub(last).Round(time.Millisecond))
			}
		case StatusSuspect:
			if now.Sub(last) <= limit {
				e.node.Status, e.node.Since = StatusAlive, now
				changed = true
				g.logger.Info("node is alive again", "node", name)
			}
		case StatusDead, StatusLeft:
			if g.cfg.ReapAfter > 0 && now.Sub(e.node.Since) > g.cfg.ReapAfter {
				delete(g.nodes, name)
				delete(g.heard, e.node.Addr)
				changed = true
			}
		}
	}
	return changed
}

// publish stores a new status snapshot and wakes waiters.
func (g *Gossip) publish() {
	g.mu.Lock()
	m := make(map[string]string, len(g.nodes))
	for name, e := range g.nodes {
		m[name] = e.node.Status
	}
	g.mu.Unlock()
	g.statuses.Store(&m)
	g.changedMu.Lock()
	close(g.changed)
	g.changed = make(chan struct{})
	g.changedMu.Unlock()
}

// upsert records memberlist's view of n with status. A metadata update
// (update) is news about the node, not from it: it leaves a suspect node
// suspect.
func (g *Gossip) upsert(n *memberlist.Node, status string, update bool) {
	meta, err := decodeMeta(n.Meta)
	addr := n.Address()
	now := time.Now()
	g.mu.Lock()
	e, ok := g.nodes[n.Name]
	if !ok {
		e = &entry{}
		g.nodes[n.Name] = e
	}
	if err != nil && n.Name != g.cfg.Name {
		g.logger.Warn("gossip peer is not a herd node (its metadata is not herd's)", "node", n.Name, "addr", addr)
	}
	if status == StatusDead && meta.Leaving {
		status = StatusLeft
	}
	if update && e.node.Status == StatusSuspect && status == StatusAlive {
		status = StatusSuspect
	}
	if e.node.Status != status || e.node.Addr != addr {
		e.node.Since = now
	}
	if status == StatusAlive && e.node.Status != StatusAlive && e.node.Status != StatusSuspect {
		e.lastHeard = now // a (re)joining node starts with a clean slate
	}
	e.node = Node{Name: n.Name, Addr: addr, IP: n.Addr.String(), Port: int(n.Port), Meta: meta, Status: status, Since: e.node.Since}
	if e.node.Since.IsZero() {
		e.node.Since = now
	}
	g.mu.Unlock()
	g.publish()
}

// Join contacts each of addrs (host or host:port; the port defaults to
// 7946) and joins the pool through every one that answers. It makes one
// attempt per address; the caller retries. The error, when no address
// worked, names each address and why it failed.
func (g *Gossip) Join(ctx context.Context, addrs []string) (int, error) {
	var failures []string
	joined := 0
	for _, a := range addrs {
		if ctx.Err() != nil {
			return joined, ctx.Err()
		}
		addr, err := normalizeAddr(a)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		if addr == g.LocalAddr() {
			continue
		}
		if err := probeTCP(ctx, addr); err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", addr, err))
			continue
		}
		n, err := g.ml.Join([]string{addr})
		if err != nil || n == 0 {
			failures = append(failures, fmt.Sprintf("%s: answers on TCP but is not a herd gossip endpoint (%s)", addr, oneLine(err)))
			continue
		}
		joined += n
	}
	if joined == 0 {
		if len(failures) == 0 {
			return 0, fmt.Errorf("gossip: no address to join but this node's own (%s)", g.LocalAddr())
		}
		return 0, fmt.Errorf("gossip: join failed: %s", strings.Join(failures, "; "))
	}
	return joined, nil
}

// oneLine flattens memberlist's multi-line errors so that a failed join is
// one log line.
func oneLine(err error) string {
	if err == nil {
		return "no node answered"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// normalizeAddr turns "host" or "host:port" into "host:port".
func normalizeAddr(a string) (string, error) {
	a = strings.TrimSpace(a)
	if a == "" {
		return "", fmt.Errorf("empty join address")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		// No port: the whole thing is the host.
		host, port = strings.Trim(a, "[]"), fmt.Sprint(DefaultPort)
	}
	if host == "" {
		return "", fmt.Errorf("join address %q has no host", a)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 1 || p > 65535 || fmt.Sprint(p) != port {
		return "", fmt.Errorf("join address %q: port %q is not in 1-65535", a, port)
	}
	return net.JoinHostPort(host, port), nil
}

// ValidateJoinAddr checks one --join address without contacting it.
func ValidateJoinAddr(a string) error {
	_, err := normalizeAddr(a)
	return err
}

// probeTCP says whether anything listens at addr, with a reason a person
// can act on when nothing does.
func probeTCP(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("nothing answers (%w)", err)
	}
	return c.Close()
}

// Leave tells the pool this node is leaving (its metadata first, so peers
// report it as left rather than dead) and waits up to timeout for the
// message to spread.
func (g *Gossip) Leave(timeout time.Duration) error {
	m := g.LocalMeta()
	m.Leaving = true
	if err := g.SetMeta(m); err != nil {
		g.logger.Warn("could not announce leaving", "err", err)
	}
	if err := g.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Close stops memberlist and every goroutine of the package. Safe to call
// more than once.
func (g *Gossip) Close() error {
	var err error
	g.closeOnce.Do(func() {
		close(g.stop)
		err = g.ml.Shutdown()
		g.wg.Wait()
	})
	return err
}

// delegate answers memberlist's metadata questions.
type delegate Gossip

func (d *delegate) NodeMeta(limit int) []byte {
	b := *(*Gossip)(d).meta.Load()
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events keeps the view in step with memberlist.
type events Gossip

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).upsert(n, StatusAlive, false) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).upsert(n, StatusAlive, true) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	g := (*Gossip)(e)
	g.upsert(n, StatusDead, false)
	g.logger.Info("node left the gossip pool", "node", n.Name, "status", g.NodeStatus(n.Name))
}

// pings hears acknowledged probes.
type pings Gossip

func (p *pings) AckPayload() []byte { return nil }
func (p *pings) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	(*Gossip)(p).heardFromNode(other.Name, time.Now())
}

// conflicts records live nodes that use this node's name.
type conflicts Gossip

func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	g := (*Gossip)(c)
	if existing.Name != g.cfg.Name {
		g.logger.Warn("two nodes claim the same name", "node", existing.Name, "addr", existing.Address(), "other_addr", other.Address())
		return
	}
	g.mu.Lock()
	g.conflicts = append(g.conflicts, other.Address())
	g.mu.Unlock()
	g.logger.Error("another live node uses this node's name", "name", existing.Name, "other_addr", other.Address())
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines into slog
// records, and counts the messages memberlist dropped as undecryptable
// (it reports them only in its log).
type logWriter struct {
	logger        *slog.Logger
	undecryptable *atomic.Uint64
}

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			level, line = l, strings.TrimSpace(rest)
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if strings.Contains(line, "Decrypt packet failed") || strings.Contains(line, "remote state is not encrypted") ||
		strings.Contains(line, "no installed keys could decrypt") {
		w.undecryptable.Add(1)
		// A stranger's packets, or a node that missed a key rotation: one
		// line each at debug, the count in herd_gossip_undecryptable_total.
		level = slog.LevelDebug
	}
	w.logger.Log(context.Background(), level, line)
	return len(p), nil
}
