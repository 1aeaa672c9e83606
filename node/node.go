package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
	"github.com/herdcluster/herd/services"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNameTaken: a live node already uses this node's name.
var ErrNameTaken = errors.New("node name is taken by a live node")

// ErrJoinTimeout: --retry-join-timeout passed before the node could join.
var ErrJoinTimeout = errors.New("gave up joining")

// Node is one running herd node.
type Node struct {
	cfg    Config
	logger *slog.Logger

	dir       *dataDir
	gatewayLn net.Listener
	apiLn     net.Listener
	serviceLn net.Listener

	gossip *gossip.Gossip
	// member is the local registry member, nil while the node is a spare.
	// It changes at run time: a spare the autopilot promotes gets one, a
	// voter removed from the registry loses it.
	member atomic.Pointer[registry.Member]
	client *clientv3.Client
	// epMu orders the client's endpoint changes with its one-endpoint
	// dials (registryMembers).
	epMu      sync.RWMutex
	registrar *registry.Registrar
	// maint is the node's maintenance state (maint.go).
	maint *maintState
	// config follows the --config-dir (configdir.go); nil without one.
	config  *configState
	checks  *checkState
	catalog *registry.Catalog
	host    *services.Host
	gateway *gateway.Gateway
	api     *apiServer

	// phase is "starting", "running" or "stopping", for /readyz.
	phase atomic.Pointer[string]
	// bootstrapProposal is what this node proposes while forming a cluster
	// with --bootstrap-expect.
	bootstrapProposal atomic.Pointer[string]
	// leaving is set by Leave: the member's removal is expected, and Close
	// clears the member data.
	leaving atomic.Bool

	// The node's identity (nil in --insecure mode, and while a
	// --bootstrap-expect node has not settled its founders): its
	// certificate store, the gossip keyring and the join token it knows.
	store   atomic.Pointer[secure.Store]
	keyring atomic.Pointer[secure.Keyring]
	token   atomic.Pointer[secure.Token]
	// secrets is the registry's identity material, once the client exists.
	secrets     atomic.Pointer[registry.Secrets]
	joinSrv     *secure.JoinServer
	securedOnce sync.Once
	// admitted and renewals count joiners admitted by this node and its
	// own certificate renewals, for /metrics and the tests.
	admitted atomic.Uint64
	renewals atomic.Uint64
	// acls is the node's mirror of the API tokens and its audit counters;
	// tokens is where they live in the registry (set with the client).
	acls   aclState
	tokens *registry.ACL
	// savedVoters is the voters' URL list last recorded in the data dir.
	savedVoters atomic.Pointer[string]

	errc      chan error
	bgCtx     context.Context
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and returns a node that Start runs.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, logger: cfg.Logger, errc: make(chan error, 4)}
	if cfg.ConfigDir != "" {
		n.config = newConfigState(cfg.ConfigDir)
	}
	n.bgCtx, n.bgCancel = context.WithCancel(context.Background())
	n.setPhase("starting")
	return n, nil
}

func (n *Node) setPhase(p string) { n.phase.Store(&p) }

// Err delivers fatal errors that happen after Start returned (the registry
// member failing, a listener dying). The caller should Close the node.
func (n *Node) Err() <-chan error { return n.errc }

func (n *Node) fail(err error) {
	select {
	case n.errc <- err:
	default:
	}
}

// goBackground runs f on a goroutine that Close cancels and waits for.
func (n *Node) goBackground(f func(ctx context.Context)) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		f(n.bgCtx)
	}()
}

// Start brings the node up, in this order:
//  1. open and lock the data dir; read or create the node ID;
//  2. bind the gateway, API and service listeners (a port in use fails here,
//     before anything else has happened) and check the etcd ports are free;
//  3. settle the node's identity (identityAtStart): load it, create the
//     cluster's, or be admitted through the join exchange with the token;
//  4. start gossip, encrypted with the cluster's keyring, and, once the node
//     has its certificate, the agent API over HTTPS (it answers /healthz at
//     once and /readyz with "starting") and the join server;
//  5. start the registry member (mutual TLS on its client and peer URLs):
//     restart from the data dir if it holds one, bootstrap a new cluster
//     when there is nothing to join, or join the cluster found through
//     --join as a learner and get promoted;
//  6. start the registry client, the node's lease and the catalog, and
//     follow the cluster's secrets (token rotation, keyring, renewal);
//  7. serve the built-in services and register them, and serve the gateway.
//
// Cancelling ctx aborts a start that is still joining. A failed Start
// undoes what it did; the caller need not Close.
func (n *Node) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			n.Close(context.Background())
		}
	}()
	cfg := &n.cfg
	if n.dir, err = openDataDir(cfg.DataDir); err != nil {
		return err
	}
	if n.maint, err = loadMaint(cfg.DataDir); err != nil {
		return err
	}
	n.logger.Info("starting herd node", "name", cfg.Name, "id", n.dir.id, "version", cfg.Version,
		"bind", cfg.BindIP, "advertise", cfg.advertise(), "data_dir", cfg.DataDir)

	if n.gatewayLn, err = listen("--gateway-port", cfg.BindIP, cfg.GatewayPort); err != nil {
		return err
	}
	if n.apiLn, err = listen("--api-port", cfg.BindIP, cfg.APIPort); err != nil {
		return err
	}
	if n.serviceLn, err = listen("--service-port", cfg.BindIP, cfg.ServicePort); err != nil {
		return err
	}
	for _, p := range []struct {
		flag string
		port int
	}{{"--client-port", cfg.ClientPort}, {"--peer-port", cfg.PeerPort}} {
		ln, err := listen(p.flag, cfg.BindIP, p.port)
		if err != nil {
			return err
		}
		ln.Close()
	}

	if err := n.identityAtStart(ctx); err != nil {
		return err
	}

	gcfg := gossip.DefaultConfig(cfg.Name)
	gcfg.BindIP, gcfg.BindPort, gcfg.AdvertiseIP = cfg.BindIP, cfg.GossipPort, cfg.AdvertiseIP
	gcfg.Logger = n.logger
	if gcfg.PrimaryKey, gcfg.Keys, err = n.gossipKeys(); err != nil {
		return err
	}
	if n.gossip, err = gossip.New(gcfg, n.meta(api.RoleNone)); err != nil {
		return fmt.Errorf("--gossip-port: %w", err)
	}

	n.goBackground(n.recordPeers)

	if n.api, err = newAPIServer(n); err != nil {
		return err
	}
	if n.store.Load() != nil || cfg.Insecure {
		n.startSecured()
	}

	if err := n.startMember(ctx); err != nil {
		return err
	}

	if n.client, err = registry.NewClient(n.registryEndpoints(), n.clientTLS(), n.logger); err != nil {
		return err
	}
	n.tokens = registry.NewACL(n.client)
	n.followSecrets()
	if !cfg.Insecure {
		n.goBackground(n.followTokens)
		n.goBackground(n.reapTokens)
	}
	n.goBackground(n.renewCertificates)
	if m := n.member.Load(); m != nil {
		n.watchMember(m)
	}
	n.newChecks()
	rcfg := registry.DefaultRegistrarConfig(cfg.Name)
	rcfg.Logger = n.logger
	rcfg.OnChange = n.instanceChanged
	rcfg.Overlay = n.maint.overlay
	if n.registrar, err = registry.NewRegistrar(registry.LocalClient(n.client, n.member.Load), rcfg); err != nil {
		return err
	}
	n.registrar.Start()
	n.goBackground(n.writeCheckStatus)
	n.goBackground(n.followMaint)
	n.goBackground(n.migrateLegacyKept)
	n.catalog = registry.NewCatalog(n.client, 0, n.logger)
	n.catalog.Start()
	n.goBackground(n.watchOwnInstances)
	n.goBackground(n.followRole)
	n.goBackground(n.autopilot)

	hcfg := services.Config{Node: cfg.Name, AdvertiseIP: cfg.advertise(), Port: cfg.ServicePort, Services: cfg.Services}
	if s := n.store.Load(); s != nil && cfg.InternalTLS {
		hcfg.TLS = s.ServerConfig(tls.RequireAndVerifyClientCert)
	}
	if n.host, err = services.NewHost(hcfg, n.registrar, n.logger); err != nil {
		return err
	}
	n.goBackground(func(context.Context) {
		if err := n.host.Serve(n.serviceLn); err != nil {
			n.fail(err)
		}
	})
	n.goBackground(func(ctx context.Context) { _ = n.host.RegisterAll(ctx) })
	if n.config != nil {
		n.goBackground(n.followConfig)
	}

	gwcfg := gateway.DefaultConfig()
	gwcfg.CORSOrigins = cfg.CORSOrigins
	gwcfg.Balancer = cfg.Balancer
	gwcfg.LocalNode, gwcfg.PreferLocal = cfg.Name, cfg.PreferLocal
	gwcfg.TrustedProxies, _ = cfg.trustedProxies() // checked by Validate
	gwcfg.RateLimit, gwcfg.RateBurst = cfg.RateLimit, cfg.RateBurst
	gwcfg.DialTimeout, gwcfg.ResponseHeaderTimeout = cfg.DialTimeout, cfg.ResponseHeaderTimeout
	gwcfg.HedgeAfter, gwcfg.HedgeAuto, _ = cfg.hedge() // checked by Validate
	gwcfg.UpstreamTLS = n.clientTLS()
	gwcfg.DebugHeaders = cfg.DebugHeaders
	gwcfg.ClientBodyTimeout, gwcfg.ClientWriteTimeout = cfg.ClientBodyTimeout, cfg.ClientWriteTimeout
	gwcfg.MaxConns, gwcfg.MaxConnsPerIP = cfg.MaxConns, cfg.MaxConnsPerIP
	if cfg.GatewayTLSCert != "" {
		fc, err := secure.NewFileCertificate(cfg.GatewayTLSCert, cfg.GatewayTLSKey)
		if err != nil {
			return fmt.Errorf("--gateway-tls-cert/--gateway-tls-key: %w", err)
		}
		gwcfg.TLS = &tls.Config{GetCertificate: fc.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	if n.gateway, err = gateway.New(gwcfg, n.catalog, n.gossip, n.logger); err != nil {
		return err
	}
	n.goBackground(func(context.Context) {
		if err := n.gateway.Serve(n.gatewayLn); err != nil {
			n.fail(err)
		}
	})
	n.setPhase("running")
	n.logger.Info("herd node started", "gateway", addr(cfg.advertise(), cfg.GatewayPort),
		"api", addr(cfg.advertise(), cfg.APIPort), "services", strings.Join(cfg.Services, ","))
	return nil
}

func addr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

func listen(flag, ip string, port int) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr(ip, port))
	if err != nil {
		return nil, fmt.Errorf("%s %d: cannot listen on %s: %w", flag, port, addr(ip, port), err)
	}
	return ln, nil
}

func (n *Node) meta(role string) gossip.Meta {
	m := gossip.Meta{
		ID: n.dir.id, Version: n.cfg.Version, Role: role,
		GatewayPort: n.cfg.GatewayPort, APIPort: n.cfg.APIPort, ServicePort: n.cfg.ServicePort,
		Expect: n.cfg.BootstrapExpect, Proposal: n.proposal(), Maint: n.maintSummary(),
	}
	mc := n.memberConfig()
	m.PeerURL = mc.PeerURL()
	if mem := n.member.Load(); mem != nil {
		m.ClientURL = mem.ClientURL()
	}
	return m
}

// proposal is the initial cluster this node proposes or formed with
// --bootstrap-expect, "" when none.
func (n *Node) proposal() string {
	if p := n.bootstrapProposal.Load(); p != nil {
		return *p
	}
	return n.dir.loadProposal()
}

func (n *Node) memberConfig() registry.MemberConfig {
	mc := n.cfg.memberConfig(n.logger)
	mc.TLS = n.memberTLS()
	return mc
}

func (c *Config) memberConfig(logger *slog.Logger) registry.MemberConfig {
	mc := registry.DefaultMemberConfig(c.Name, c.etcdDir())
	mc.BindIP, mc.AdvertiseIP = c.BindIP, c.AdvertiseIP
	mc.ClientPort, mc.PeerPort = c.ClientPort, c.PeerPort
	mc.ForceNewCluster = c.ForceNewCluster
	mc.SnapshotCount = c.RaftSnapshotCount
	mc.Logger = logger
	return mc
}

// RestoreSnapshot makes cfg.DataDir a new one-member cluster holding the
// data of the snapshot file at path. Started with the same name, data dir
// and addresses, `herd agent` serves it; other nodes then join it.
func RestoreSnapshot(cfg Config, path string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("snapshot file: %w", err)
	}
	d, err := openDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer d.close()
	if cfg.Insecure {
		return registry.RestoreSnapshot(path, cfg.memberConfig(cfg.Logger))
	}
	// The restored registry is a new cluster with a new identity: the
	// snapshot's secrets (the old CA key, join secret and keyring) are
	// replaced at the first start (restoredMarker).
	n := &Node{cfg: cfg, logger: cfg.Logger}
	if err := n.createIdentity(nil, true); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, restoredMarker), []byte("replace the registry's secrets with this data dir's\n"), 0o600); err != nil {
		return err
	}
	return registry.RestoreSnapshot(path, n.memberConfig())
}

// restoredMarker tells a node restored from a snapshot to overwrite the
// snapshot's identity material in the registry with its own, once.
const restoredMarker = "restored-from-snapshot"

// joinGossip joins the gossip pool through --join until it succeeds, ctx is
// done or deadline passes, logging every failed attempt with each address
// and why it failed. It fails at once if a live node already has this
// node's name.
func (n *Node) joinGossip(ctx context.Context, addrs []string, deadline time.Time) error {
	return n.retryJoin(ctx, deadline, func() (bool, error) {
		if _, err := n.gossip.Join(ctx, addrs); err != nil {
			return false, err
		}
		if others := n.gossip.NameConflict(); len(others) > 0 {
			return true, fmt.Errorf("--name %q: %w at %s", n.cfg.Name, ErrNameTaken, strings.Join(others, ", "))
		}
		n.logger.Info("joined the gossip pool", "via", addrs)
		return true, nil
	})
}

// retryJoin calls try until it is done (done: its error, nil or not, is
// the result), ctx is done or deadline passes, logging every failed
// attempt with jittered backoff between them. The error after a deadline
// is ErrJoinTimeout with the last failure.
func (n *Node) retryJoin(ctx context.Context, deadline time.Time, try func() (done bool, err error)) error {
	b := newBackoff()
	var last error
	for attempt := 1; ; attempt++ {
		done, err := try()
		if done {
			return err
		}
		last = err
		if ctx.Err() != nil {
			break
		}
		n.logger.Warn("cannot join yet; retrying", "attempt", attempt, "err", err)
		if sleep(ctx, b.next()) != nil {
			break
		}
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return fmt.Errorf("%w after --retry-join-timeout %s: %v", ErrJoinTimeout, n.cfg.RetryJoinTimeout, last)
	}
	return fmt.Errorf("join: %w (last: %v)", ctx.Err(), last)
}

// rejoinAddrs are the gossip addresses a restarted node tries: --join and
// the peers it saw alive last time, without its own.
func (n *Node) rejoinAddrs() []string {
	seen := map[string]bool{n.gossip.LocalAddr(): true}
	var out []string
	for _, a := range append(append([]string(nil), n.cfg.Join...), n.dir.loadPeers()...) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// watchOwnInstances asks the registrar to check its lease at once when an
// instance it holds under a lease has vanished from the catalog without a
// deregistration: the lease was revoked behind its back (etcd #15247), and
// the next keepalive would notice only up to TTL/3 later.
//
// It looks at most every ownCheckEvery: a node holding 10,000 instances
// while hundreds of registrations a second go by must not spend its CPU
// here (a look is a lookup per instance, O(log n) each).
func (n *Node) watchOwnInstances(ctx context.Context) {
	for {
		changed := n.catalog.Changed()
		if ok, _ := n.catalog.Synced(); ok && n.registrar.LeaseID() != 0 && n.registrar.AnyMissing(n.catalog.Has) {
			n.registrar.CheckLease()
		}
		if sleep(ctx, ownCheckEvery) != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// ownCheckEvery spaces watchOwnInstances' looks.
const ownCheckEvery = 100 * time.Millisecond

// recordPeers keeps the data dir's list of alive gossip peers up to date.
func (n *Node) recordPeers(ctx context.Context) {
	var last string
	for {
		changed := n.gossip.Changed()
		var addrs []string
		for _, g := range n.gossip.Nodes() {
			if g.Name != n.cfg.Name && g.Status == gossip.StatusAlive {
				addrs = append(addrs, g.Addr)
			}
		}
		if key := strings.Join(addrs, ","); len(addrs) > 0 && key != last {
			if err := n.dir.savePeers(addrs); err != nil {
				n.logger.Warn("could not record gossip peers in the data dir", "err", err)
			} else {
				last = key
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Close stops the node gracefully, in this order:
//  1. /readyz says "stopping";
//  2. the lease is revoked: every instance of this node leaves the registry
//     and peers stop routing here at once;
//  3. after DrainDelay (peers' catalogs catch up), the gateway stops
//     accepting and drains its in-flight requests, then the service host;
//  4. background work stops and is waited for; the catalog, the API server
//     and the registry client close;
//  5. the node leaves gossip (peers see it as left, not dead);
//  6. the registry member stops (a leader hands leadership over first).
//     Raft membership is not changed;
//  7. the data dir lock is released.
//
// ctx bounds the drains. Safe to call more than once, and after a failed
// Start.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.close(ctx) })
	return n.closeErr
}

func (n *Node) close(ctx context.Context) error {
	n.setPhase("stopping")
	var errs []error
	if n.checks != nil {
		// No check runs or writes once the lease is going.
		n.checks.runner.Close()
	}
	if n.registrar != nil {
		if err := n.registrar.Close(ctx); err != nil {
			errs = append(errs, err)
		} else if n.cfg.DrainDelay > 0 && n.gateway != nil {
			n.logger.Info("lease revoked; draining before stopping", "delay", n.cfg.DrainDelay)
			_ = sleep(ctx, n.cfg.DrainDelay)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownTimeout)
	defer cancel()
	if n.gateway != nil {
		if err := n.gateway.Shutdown(dctx); err != nil {
			errs = append(errs, err)
		}
	} else if n.gatewayLn != nil {
		n.gatewayLn.Close()
	}
	if n.host != nil {
		if err := n.host.Shutdown(dctx); err != nil {
			errs = append(errs, err)
		}
	} else if n.serviceLn != nil {
		n.serviceLn.Close()
	}
	n.bgCancel()
	if n.catalog != nil {
		n.catalog.Close()
	}
	if n.api != nil {
		if err := n.api.shutdown(dctx); err != nil {
			errs = append(errs, err)
		}
	}
	if n.apiLn != nil {
		n.apiLn.Close() // never served when the start failed before
	}
	if n.joinSrv != nil {
		n.joinSrv.Close()
	}
	// Background work (role, autopilot, joins) uses the client and gossip:
	// it ends before they close.
	n.bg.Wait()
	if n.client != nil {
		n.client.Close()
	}
	if n.gossip != nil {
		if len(n.gossip.Nodes()) > 1 {
			// A leave that no peer acknowledged in time (they may be
			// stopping too) is not a failure: they will mark us dead.
			if err := n.gossip.Leave(2 * time.Second); err != nil {
				n.logger.Info("gossip leave not acknowledged", "err", err)
			}
		}
		if err := n.gossip.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if m := n.member.Load(); m != nil {
		m.Close()
	}
	if n.leaving.Load() {
		// The member was removed: its data can never be used again.
		if err := n.clearMemberData(); err != nil {
			errs = append(errs, fmt.Errorf("clear member data: %w", err))
		}
		n.logger.Info("left the cluster; member data cleared")
	}
	if n.dir != nil {
		n.dir.close()
	}
	n.logger.Info("herd node stopped")
	return errors.Join(errs...)
}

// backoff is a capped exponential backoff with full jitter for joins.
type backoff struct{ cur time.Duration }

func newBackoff() *backoff { return &backoff{cur: 250 * time.Millisecond} }

func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, 10*time.Second)
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
