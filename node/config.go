package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/secure"
	"github.com/herdcluster/herd/services"
)

// Config is everything a node needs. cmd/herd fills it from flags and
// environment variables; nothing else does.
type Config struct {
	// Name is the node name, a DNS label unique in the cluster.
	Name string
	// BindIP is the IP every listener binds.
	BindIP string
	// AdvertiseIP is the IP peers use to reach this node; empty means BindIP.
	AdvertiseIP string
	// DataDir holds the node's identity and its registry member.
	DataDir string
	// Join lists gossip addresses (host or host:port) of nodes to join.
	Join []string
	// RetryJoinTimeout bounds how long joining may take before the node
	// gives up and exits; zero means keep trying forever.
	RetryJoinTimeout time.Duration
	// BootstrapExpect, when set, makes a node without data wait until this
	// many nodes with the same setting meet in gossip and then form a new
	// cluster together; zero means the first node bootstraps alone and the
	// others join it.
	BootstrapExpect int

	GossipPort  int
	ClientPort  int
	PeerPort    int
	GatewayPort int
	APIPort     int
	ServicePort int

	// Services are the built-in services this node hosts.
	Services []string
	// ConfigDir holds service definitions, one JSON file per instance
	// (configdir.go), registered at start and on every reload.
	ConfigDir string
	// CORSOrigins are the origins the gateway allows; empty means no CORS.
	CORSOrigins []string
	// APIAllowedHosts are Host names the agent API answers to besides its
	// own addresses and node name (a DNS name operators use for it).
	APIAllowedHosts []string
	// APIAllowedOrigins are browser origins whose requests the agent API
	// accepts (a UI served elsewhere); any other foreign origin is refused.
	APIAllowedOrigins []string
	// AnonymousRead lets requests without a token read (members, services,
	// instances, metrics); they never change anything. Off by default:
	// every /v1 request needs an API token or a cluster certificate.
	AnonymousRead bool
	// MetricsAnonymous serves /metrics without a token (for a Prometheus
	// that holds none); otherwise it needs the read policy.
	MetricsAnonymous bool
	// aclReapAfter and aclReapEvery (0: an hour, five minutes) are how long
	// an expired API token stays listed and how often nodes look; tests
	// shorten them.
	aclReapAfter, aclReapEvery time.Duration
	// Balancer is the gateway's balancing policy (see gateway.Config).
	Balancer string
	// PreferLocal makes the gateway send a service's traffic to this node's
	// own instance while it is healthy.
	PreferLocal bool
	// TrustedProxies are CIDRs whose X-Forwarded-For the gateway keeps.
	TrustedProxies []string
	// RateLimit is requests per second per client IP at the gateway (0: no
	// limit), with bursts of RateBurst.
	RateLimit float64
	RateBurst int
	// DialTimeout and ResponseHeaderTimeout bound the gateway's upstream
	// connects and waits for response headers (0: the gateway's defaults,
	// 500ms and 15s).
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	// HedgeAfter is "auto" (the default, also ""; the service's p95), a
	// duration, or "off": when an idempotent request has no answer by
	// then, the gateway also asks a second instance (within the hedge cap
	// and the retry budget).
	HedgeAfter string

	// JoinToken is the cluster's join token (herd1....), needed by a node
	// that must be admitted: one started with --join or --bootstrap-expect
	// whose data dir holds no identity yet. It is a secret.
	JoinToken string
	// token is JoinToken parsed by Validate.
	token *secure.Token
	// Insecure runs gossip, the registry and the agent API in plaintext
	// with no authentication: anyone who reaches the ports owns the
	// cluster. Opt-in, for comparisons and for clusters made before
	// transport security; said loudly at every start.
	Insecure bool
	// CertValidity is how long the certificates this node issues (its own
	// and its joiners') are valid (0: a year). Nodes renew theirs once two
	// thirds of it have passed.
	CertValidity time.Duration
	// GatewayTLSCert and GatewayTLSKey, when set, are PEM files the gateway
	// terminates TLS with (read again when they change); empty, the
	// gateway serves plain HTTP.
	GatewayTLSCert, GatewayTLSKey string
	// InternalTLS makes the service host serve HTTPS with the node
	// certificate and require a cluster certificate from its clients, and
	// registers its instances so that gateways dial them with TLS: the hop
	// from a peer's gateway to this node's services is encrypted and only
	// cluster members make it. Every gateway of a secure cluster can dial
	// such instances, with or without the flag itself.
	InternalTLS bool
	// EnableDebug serves Go's profiles at /debug/pprof/ on the agent API,
	// to operator tokens only (as Consul's enable_debug).
	EnableDebug bool
	// DebugHeaders makes the gateway name the serving node in
	// X-Herd-Upstream on every answer (otherwise only to trusted proxies).
	DebugHeaders bool
	// ClientBodyTimeout and ClientWriteTimeout bound how long the gateway
	// waits for a client's next body bytes, and for a client to take more
	// of an answer (0: the gateway's defaults, 30s each).
	ClientBodyTimeout, ClientWriteTimeout time.Duration
	// MaxConns and MaxConnsPerIP cap the gateway's client connections in
	// total and per client IP (0: the gateway's defaults).
	MaxConns, MaxConnsPerIP int

	// Out receives what the node prints for its operator once: the join
	// token of a cluster it creates. nil prints nothing (the token is in
	// the data dir).
	Out io.Writer

	// ForceNewCluster restarts the member in DataDir as the only member of a
	// new cluster, keeping its data (recovery after losing a majority).
	ForceNewCluster bool

	// MaxVoters caps the registry voters (odd, 1-9; default 5). The
	// autopilot keeps min(MaxVoters, largest odd number of healthy nodes)
	// voters; the other nodes are spares.
	MaxVoters int
	// DeadVoterTimeout is how long a voter must be dead (gossip says dead,
	// or suspect, and its member does not answer), counted from when the
	// leader last heard from it, before the autopilot replaces it (default
	// 2m).
	DeadVoterTimeout time.Duration
	// RaftSnapshotCount is how many registry log entries are applied
	// between snapshots, and how many a lagging member may be behind before
	// it is sent a snapshot instead of entries (0: etcd's 10000). The chaos
	// suite sets it low so that a member cut off for a while catches up by
	// snapshot.
	RaftSnapshotCount uint64

	// DrainDelay is how long a stopping node keeps serving after revoking
	// its lease, so peers' catalogs drop it before it stops answering
	// (default 1s).
	DrainDelay time.Duration
	// ShutdownTimeout bounds the graceful drain of in-flight requests
	// (default 10s).
	ShutdownTimeout time.Duration

	// Version is reported in gossip and the API.
	Version string
	// Logger receives every log line of the node.
	Logger *slog.Logger
}

// The gateway's defaults for the client limits, for the flags' help.
const (
	DefaultClientBodyTimeout  = gateway.DefaultClientBodyTimeout
	DefaultClientWriteTimeout = gateway.DefaultClientWriteTimeout
	DefaultMaxConns           = gateway.DefaultMaxConns
	DefaultMaxConnsPerIP      = gateway.DefaultMaxConnsPerIP
)

// DefaultConfig returns the defaults of `herd agent`.
func DefaultConfig() Config {
	return Config{
		Name:             DefaultName(),
		BindIP:           "127.0.0.1",
		GossipPort:       gossip.DefaultPort,
		ClientPort:       2379,
		PeerPort:         2380,
		GatewayPort:      8080,
		APIPort:          8500,
		ServicePort:      9000,
		Services:         services.Builtin(),
		MaxVoters:        5,
		DeadVoterTimeout: 2 * time.Minute,
		DrainDelay:       time.Second,
		ShutdownTimeout:  10 * time.Second,
		Version:          "dev",
	}
}

// DefaultName is the host name made into a DNS label: its first label,
// lower-cased, with anything else replaced by '-'.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "herd"
	}
	h, _, _ = strings.Cut(strings.ToLower(h), ".")
	b := []byte(h)
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			b[i] = '-'
		}
	}
	s := strings.Trim(string(b), "-")
	if len(s) > 63 {
		s = s[:63]
	}
	if !api.ValidName(s) {
		return "herd"
	}
	return s
}

// Validate checks the configuration; each error names the flag.
func (c *Config) Validate() error {
	if !api.ValidName(c.Name) {
		return fmt.Errorf("--name %q is not a DNS label (lower-case letters, digits and '-', 1-63 characters)", c.Name)
	}
	ip := net.ParseIP(c.BindIP)
	if ip == nil {
		return fmt.Errorf("--bind %q is not an IP address", c.BindIP)
	}
	if c.AdvertiseIP != "" {
		aip := net.ParseIP(c.AdvertiseIP)
		if aip == nil {
			return fmt.Errorf("--advertise %q is not an IP address", c.AdvertiseIP)
		}
		if aip.IsUnspecified() {
			return fmt.Errorf("--advertise %s cannot be dialled by peers; give the node's own address", c.AdvertiseIP)
		}
	} else if ip.IsUnspecified() {
		return fmt.Errorf("--bind %s needs --advertise: peers cannot dial %s", c.BindIP, c.BindIP)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty")
	}
	if c.ConfigDir != "" {
		if st, err := os.Stat(c.ConfigDir); err != nil {
			return fmt.Errorf("--config-dir: %w", err)
		} else if !st.IsDir() {
			return fmt.Errorf("--config-dir %s is not a directory", c.ConfigDir)
		}
	}
	ports := []struct {
		flag string
		v    int
	}{
		{"--gossip-port", c.GossipPort}, {"--client-port", c.ClientPort}, {"--peer-port", c.PeerPort},
		{"--gateway-port", c.GatewayPort}, {"--api-port", c.APIPort}, {"--service-port", c.ServicePort},
	}
	seen := map[int]string{}
	for _, p := range ports {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("%s %d is not in 1-65535", p.flag, p.v)
		}
		if other, ok := seen[p.v]; ok {
			return fmt.Errorf("%s and %s are both %d", other, p.flag, p.v)
		}
		seen[p.v] = p.flag
	}
	for _, j := range c.Join {
		if err := gossip.ValidateJoinAddr(j); err != nil {
			return fmt.Errorf("--join: %w", err)
		}
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 9 {
		return fmt.Errorf("--bootstrap-expect %d is not in 0-9", c.BootstrapExpect)
	}
	if c.BootstrapExpect > 1 && len(c.Join) == 0 {
		return fmt.Errorf("--bootstrap-expect %d needs --join with the addresses of the other nodes", c.BootstrapExpect)
	}
	if c.MaxVoters < 1 || c.MaxVoters > 9 || c.MaxVoters%2 == 0 {
		return fmt.Errorf("--max-voters %d must be odd and in 1-9", c.MaxVoters)
	}
	if c.RaftSnapshotCount != 0 && c.RaftSnapshotCount < 10 {
		return fmt.Errorf("--raft-snapshot-count %d is under 10 (0 keeps etcd's default)", c.RaftSnapshotCount)
	}
	if c.DeadVoterTimeout < time.Second {
		return fmt.Errorf("--dead-voter-timeout %s is under 1s", c.DeadVoterTimeout)
	}
	if c.RetryJoinTimeout < 0 {
		return fmt.Errorf("--retry-join-timeout %s is negative", c.RetryJoinTimeout)
	}
	for _, s := range c.Services {
		if !contains(services.Builtin(), s) {
			return fmt.Errorf("--services: unknown service %q (built-in: %s)", s, strings.Join(services.Builtin(), ", "))
		}
	}
	if _, err := newAPIGuard(c, nil); err != nil {
		return err
	}
	for _, o := range c.CORSOrigins {
		if o != "*" && !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			return fmt.Errorf("--cors-origins: %q is not an origin (scheme://host[:port]) or *", o)
		}
	}
	if err := (gateway.Config{Balancer: c.Balancer}).Validate(); c.Balancer != "" && err != nil {
		return fmt.Errorf("--balancer %q: want round-robin, p2c, least-request or random", c.Balancer)
	}
	if _, _, err := c.hedge(); err != nil {
		return err
	}
	if _, err := c.trustedProxies(); err != nil {
		return err
	}
	if c.RateLimit < 0 || c.RateBurst < 0 {
		return fmt.Errorf("--rate-limit %v and --rate-burst %d must not be negative", c.RateLimit, c.RateBurst)
	}
	if c.DialTimeout < 0 || c.ResponseHeaderTimeout < 0 {
		return errors.New("--dial-timeout and --response-header-timeout must not be negative")
	}
	if c.ClientBodyTimeout < 0 || c.ClientWriteTimeout < 0 {
		return fmt.Errorf("--client-body-timeout %s and --client-write-timeout %s must not be negative", c.ClientBodyTimeout, c.ClientWriteTimeout)
	}
	if c.MaxConns < 0 || c.MaxConnsPerIP < 0 {
		return fmt.Errorf("--max-conns %d and --max-conns-per-ip %d must not be negative", c.MaxConns, c.MaxConnsPerIP)
	}
	c.token = nil
	if c.JoinToken != "" {
		if c.Insecure {
			return errors.New("--join-token and --insecure: an insecure cluster has no join token; drop one of them")
		}
		t, err := secure.ParseToken(c.JoinToken)
		if err != nil {
			return fmt.Errorf("--join-token: %w", err)
		}
		c.token = &t
	}
	if c.InternalTLS && c.Insecure {
		return errors.New("--internal-tls and --insecure: an insecure node has no certificate to serve its services with; drop one of them")
	}
	if (c.GatewayTLSCert == "") != (c.GatewayTLSKey == "") {
		return errors.New("--gateway-tls-cert and --gateway-tls-key go together: give both or neither")
	}
	if c.CertValidity != 0 && c.CertValidity < 10*time.Second {
		return fmt.Errorf("--tls-cert-validity %s is under 10s", c.CertValidity)
	}
	if c.DrainDelay < 0 || c.ShutdownTimeout <= 0 {
		return errors.New("drain delay must be >= 0 and shutdown timeout > 0")
	}
	return nil
}

func (c *Config) advertise() string {
	if c.AdvertiseIP != "" {
		return c.AdvertiseIP
	}
	return c.BindIP
}

func (c *Config) etcdDir() string { return filepath.Join(c.DataDir, "etcd") }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// trustedProxies parses TrustedProxies; an address alone is a /32 or /128.
func (c *Config) trustedProxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range c.TrustedProxies {
		if pfx, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pfx.Masked())
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("--trusted-proxies: %q is neither a CIDR nor an IP address", p)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// hedge parses HedgeAfter.
func (c *Config) hedge() (after time.Duration, auto bool, err error) {
	switch c.HedgeAfter {
	case "off":
		return 0, false, nil
	case "", "auto":
		return 0, true, nil
	}
	d, err := time.ParseDuration(c.HedgeAfter)
	if err != nil || d <= 0 {
		return 0, false, fmt.Errorf("--hedge-after %q: want off, auto or a positive duration such as 100ms", c.HedgeAfter)
	}
	return d, false, nil
}
