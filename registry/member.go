package registry

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
)

// MemberConfig configures the embedded etcd member of a node.
type MemberConfig struct {
	// Name is the member name; herd uses the node name.
	Name string
	// Dir holds the member's data (etcd's --data-dir). The node passes
	// <data-dir>/etcd.
	Dir string
	// BindIP is the IP the client and peer listeners bind.
	BindIP string
	// AdvertiseIP is the IP put in the advertised URLs; empty means BindIP.
	AdvertiseIP string
	// ClientPort is the etcd client port (default 2379).
	ClientPort int
	// PeerPort is the etcd peer (Raft) port (default 2380).
	PeerPort int
	// TickMs is the Raft heartbeat interval in milliseconds (default 100).
	TickMs uint
	// ElectionMs is the Raft election timeout in milliseconds, at least 5x
	// TickMs (default 1000).
	ElectionMs uint
	// CompactionRetention is how much history periodic compaction keeps; it
	// is also the window in which a broken watch can resume (default 10m).
	CompactionRetention time.Duration
	// QuotaBackendBytes caps the backend database (default 2 GiB).
	QuotaBackendBytes int64
	// SnapshotCount is the number of applied entries between snapshots; zero
	// means etcd's default.
	SnapshotCount uint64
	// WatchProgressInterval is how often the member tells idle watchers the
	// revision it has reached (default 2s). Catalogs use the silence after
	// it to notice a watch that is stuck on a lost connection.
	WatchProgressInterval time.Duration
	// ReadyTimeout bounds how long a start waits for the member to be ready
	// before carrying on without it (a restarted member cannot be ready until
	// quorum is back; start-up never blocks on that). Default 10s.
	ReadyTimeout time.Duration
	// ForceNewCluster restarts the member as the only member of a new
	// cluster, keeping its data: the way back after losing a majority.
	ForceNewCluster bool
	// EtcdLogLevel is the lowest level of etcd's own log lines that are
	// passed on (default warn: etcd is chatty at info).
	EtcdLogLevel zapcore.Level
	// TLS secures the member's client and peer URLs with mutual TLS; nil
	// leaves them plaintext (herd's opt-in --insecure mode only).
	TLS *TLS
	// Logger receives the member's and etcd's log lines.
	Logger *slog.Logger
}

// TLS is how a member and herd's clients of the registry authenticate: a
// certificate issued by the cluster CA on both sides of every connection.
type TLS struct {
	// CertFile and KeyFile are the node's certificate and key (PEM), used
	// by etcd both to serve and to dial its peers. etcd reads them again
	// at every handshake, so a renewed certificate needs no restart.
	CertFile, KeyFile string
	// CAFile is the cluster CA certificate; only what it issued is
	// accepted, on the client port and on the peer port alike.
	CAFile string
	// Client is the configuration herd's own registry clients dial with
	// (the CA as the only root, the node certificate as client
	// certificate).
	Client *tls.Config
}

func (t *TLS) clientConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return t.Client
}

func (t *TLS) info() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.CAFile,
		ClientCertAuth: true,
		// The CA is the authentication. etcd's optional check that a
		// client certificate names the address the connection came from
		// fails behind NAT and for loopback peers (the kernel picks the
		// destination as source), so it is off.
		SkipClientSANVerify: true,
	}
}

// DefaultMemberConfig returns the defaults for a member named name storing
// its data in dir.
func DefaultMemberConfig(name, dir string) MemberConfig {
	return MemberConfig{
		Name:                  name,
		Dir:                   dir,
		BindIP:                "127.0.0.1",
		ClientPort:            2379,
		PeerPort:              2380,
		TickMs:                100,
		ElectionMs:            1000,
		CompactionRetention:   10 * time.Minute,
		QuotaBackendBytes:     2 << 30,
		ReadyTimeout:          10 * time.Second,
		WatchProgressInterval: 2 * time.Second,
		EtcdLogLevel:          zapcore.WarnLevel,
	}
}

// Validate checks the configuration; errors name the field.
func (c *MemberConfig) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("member name is empty")
	case c.Dir == "":
		return errors.New("member data dir is empty")
	case net.ParseIP(c.BindIP) == nil:
		return fmt.Errorf("member bind IP %q is not an IP address", c.BindIP)
	case c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil:
		return fmt.Errorf("member advertise IP %q is not an IP address", c.AdvertiseIP)
	case c.ClientPort < 1 || c.ClientPort > 65535:
		return fmt.Errorf("client port %d is not in 1-65535", c.ClientPort)
	case c.PeerPort < 1 || c.PeerPort > 65535:
		return fmt.Errorf("peer port %d is not in 1-65535", c.PeerPort)
	case c.ClientPort == c.PeerPort:
		return fmt.Errorf("client port and peer port are both %d", c.ClientPort)
	case c.TickMs == 0 || c.ElectionMs < 5*c.TickMs:
		return fmt.Errorf("election timeout %dms must be at least 5x the tick %dms", c.ElectionMs, c.TickMs)
	case c.CompactionRetention < time.Minute:
		return fmt.Errorf("compaction retention %s is under a minute", c.CompactionRetention)
	case c.WatchProgressInterval < 100*time.Millisecond || c.WatchProgressInterval > DefaultStaleAfter/3:
		return fmt.Errorf("watch progress interval %s is not in 100ms-%s (catalogs take a watch silent for %s for stuck)",
			c.WatchProgressInterval, DefaultStaleAfter/3, DefaultStaleAfter)
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("ready timeout %s must be positive", c.ReadyTimeout)
	}
	return nil
}

func (c *MemberConfig) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *MemberConfig) scheme() string {
	if c.TLS != nil {
		return "https"
	}
	return "http"
}

func (c *MemberConfig) advertise() string {
	if c.AdvertiseIP != "" {
		return c.AdvertiseIP
	}
	return c.BindIP
}

// ClientURL is the URL other nodes use to reach this member's client API.
func (c *MemberConfig) ClientURL() string {
	return c.scheme() + "://" + net.JoinHostPort(c.advertise(), strconv.Itoa(c.ClientPort))
}

// PeerURL is the URL other members use for Raft traffic to this member.
func (c *MemberConfig) PeerURL() string {
	return c.scheme() + "://" + net.JoinHostPort(c.advertise(), strconv.Itoa(c.PeerPort))
}

// HasData reports whether dir holds an etcd member (its write-ahead log).
// Once it does, the member restarts from it and ignores any initial-cluster
// settings.
func HasData(dir string) bool {
	entries, err := os.ReadDir(filepath.Join(dir, "member", "wal"))
	return err == nil && len(entries) > 0
}

// Member is a running embedded etcd member.
type Member struct {
	cfg    MemberConfig
	etcd   *embed.Etcd
	logger *slog.Logger

	// quiet turns etcd's log lines down to debug once Close has begun.
	quiet     *atomic.Bool
	closeOnce sync.Once
	errc      chan error
	done      chan struct{}

	// kv calls the member in-process (localkv.go), made once.
	kvOnce sync.Once
	kv     clientv3.KV
}

// Mode says how a member starts.
type startMode int

const (
	modeNew startMode = iota
	modeExisting
	modeRestart
)

// Bootstrap starts a new one-member cluster in an empty dir.
func Bootstrap(ctx context.Context, cfg MemberConfig) (*Member, error) {
	token, err := newClusterToken()
	if err != nil {
		return nil, err
	}
	return BootstrapCluster(ctx, cfg, cfg.Name+"="+cfg.PeerURL(), token)
}

// BootstrapCluster starts this member of a new cluster whose members all
// start at about the same time with the same initialCluster
// ("name=peerURL,...") and token. It does not wait for the others: a
// member that is not ready within ReadyTimeout is returned running and
// becomes ready once a quorum of the initial cluster has started.
func BootstrapCluster(ctx context.Context, cfg MemberConfig, initialCluster, token string) (*Member, error) {
	if HasData(cfg.Dir) {
		return nil, fmt.Errorf("bootstrap: %s already holds a member: %w", cfg.Dir, ErrHasData)
	}
	return startMember(ctx, cfg, modeNew, initialCluster, token)
}

// Restart starts the member held in cfg.Dir. It does not wait for quorum:
// when ReadyTimeout passes first it returns the running member and the
// member becomes ready whenever a quorum of its peers is back.
func Restart(ctx context.Context, cfg MemberConfig) (*Member, error) {
	if !HasData(cfg.Dir) {
		return nil, fmt.Errorf("restart: %s holds no member", cfg.Dir)
	}
	return startMember(ctx, cfg, modeRestart, "", "")
}

// ErrHasData is returned when a fresh start is asked of a dir that already
// holds a member.
var ErrHasData = errors.New("data dir already holds a registry member")

func newClusterToken() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cluster token: %w", err)
	}
	return "herd-" + hex.EncodeToString(b), nil
}

func startMember(ctx context.Context, cfg MemberConfig, mode startMode, initialCluster, token string) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.log().With("component", "etcd")

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	lc := url.URL{Scheme: cfg.scheme(), Host: net.JoinHostPort(cfg.BindIP, strconv.Itoa(cfg.ClientPort))}
	lp := url.URL{Scheme: cfg.scheme(), Host: net.JoinHostPort(cfg.BindIP, strconv.Itoa(cfg.PeerPort))}
	if cfg.TLS != nil {
		ec.ClientTLSInfo = cfg.TLS.info()
		ec.PeerTLSInfo = cfg.TLS.info()
	}
	ac, _ := url.Parse(cfg.ClientURL())
	ap, _ := url.Parse(cfg.PeerURL())
	ec.ListenClientUrls = []url.URL{lc}
	ec.AdvertiseClientUrls = []url.URL{*ac}
	ec.ListenPeerUrls = []url.URL{lp}
	ec.AdvertisePeerUrls = []url.URL{*ap}
	ec.TickMs = cfg.TickMs
	ec.ElectionMs = cfg.ElectionMs
	ec.PreVote = true
	ec.StrictReconfigCheck = true
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	ec.MaxTxnOps = txnOpsLimit
	ec.WatchProgressNotifyInterval = cfg.WatchProgressInterval
	if cfg.SnapshotCount > 0 {
		ec.SnapshotCount = cfg.SnapshotCount
		ec.SnapshotCatchUpEntries = cfg.SnapshotCount
	}
	quiet := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLogger(logger, cfg.EtcdLogLevel, quiet))
	switch mode {
	case modeNew:
		ec.ClusterState = embed.ClusterStateFlagNew
		ec.InitialCluster = initialCluster
		ec.InitialClusterToken = token
	case modeExisting:
		ec.ClusterState = embed.ClusterStateFlagExisting
		ec.InitialCluster = initialCluster
	case modeRestart:
		// The WAL holds the membership; etcd ignores the initial cluster.
		ec.InitialCluster = cfg.Name + "=" + cfg.PeerURL()
		ec.ForceNewCluster = cfg.ForceNewCluster
	}
	if err := ec.Validate(); err != nil {
		return nil, fmt.Errorf("etcd config: %w", err)
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start registry member: %w", err)
	}
	m := &Member{cfg: cfg, etcd: e, logger: logger, quiet: quiet, errc: make(chan error, 1), done: make(chan struct{})}
	go m.watchErrors()

	wait := cfg.ReadyTimeout
	if mode == modeExisting {
		// A learner is ready once it has caught up with the leader's log,
		// which takes longer than a restart on a large registry.
		wait = max(wait, time.Minute)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		logger.Info("registry member ready", "member_id", e.Server.MemberID().String(), "client_url", cfg.ClientURL(), "peer_url", cfg.PeerURL())
	case err := <-m.errc:
		m.Close()
		return nil, fmt.Errorf("registry member failed while starting: %w", err)
	case <-timer.C:
		if mode == modeExisting {
			m.Close()
			return nil, fmt.Errorf("registry member not ready after %s", wait)
		}
		logger.Warn("registry member is not ready yet (no quorum?); carrying on and waiting in the background", "after", cfg.ReadyTimeout)
	case <-ctx.Done():
		select {
		case <-e.Server.ReadyNotify():
			// Ready and cancelled at once: the member is in; keep it.
			return m, nil
		default:
		}
		m.Close()
		return nil, ctx.Err()
	}
	return m, nil
}

// ErrMemberStopped: the member stopped by itself, typically because it was
// removed from the cluster ("the member has been permanently removed").
var ErrMemberStopped = errors.New("registry member stopped by itself (removed from the cluster?)")

// watchErrors forwards etcd's asynchronous errors to Err. A server that
// stops by itself (it was removed from the cluster) says nothing on
// etcd's Err channel, so its stop is reported too.
func (m *Member) watchErrors() {
	var err error
	select {
	case e, ok := <-m.etcd.Err():
		if !ok || e == nil {
			return
		}
		err = e
		// A server that stops by itself before it is ready makes its
		// listeners fail with "server is stopping": report the stop.
		select {
		case <-m.etcd.Server.StoppingNotify():
			err = fmt.Errorf("%w: %w", ErrMemberStopped, e)
		default:
		}
	case <-m.etcd.Server.StopNotify():
		err = ErrMemberStopped
	case <-m.done:
		return
	}
	select {
	case <-m.done: // stopping on purpose
	case m.errc <- err:
	default:
	}
}

// Err delivers a fatal asynchronous error of the member (a listener that
// died, a corrupt store). The node stops when it reads one.
func (m *Member) Err() <-chan error { return m.errc }

// ReadyNotify is closed once the member has joined its cluster and can
// serve linearizable requests.
func (m *Member) ReadyNotify() <-chan struct{} { return m.etcd.Server.ReadyNotify() }

// ID is the etcd member ID.
func (m *Member) ID() uint64 { return uint64(m.etcd.Server.MemberID()) }

// IsLearner reports whether the member is a non-voting learner. A member
// removed from the cluster is not one (etcd's own IsLearner panics then).
func (m *Member) IsLearner() bool {
	self := m.etcd.Server.Cluster().Member(m.etcd.Server.MemberID())
	return self != nil && self.IsLearner
}

// LeaderID is the member ID of the current Raft leader as this member sees
// it, 0 when there is none.
func (m *Member) LeaderID() uint64 { return uint64(m.etcd.Server.Leader()) }

// ClientURL is the member's advertised client URL.
func (m *Member) ClientURL() string { return m.cfg.ClientURL() }

// PeerURL is the member's advertised peer URL.
func (m *Member) PeerURL() string { return m.cfg.PeerURL() }

// Close stops the member. A leader hands its leadership to a peer first
// (etcd does this in Stop). Raft membership does not change. Safe to call
// more than once.
func (m *Member) Close() {
	m.closeOnce.Do(func() {
		close(m.done)
		m.quiet.Store(true)
		m.etcd.Close()
	})
}
