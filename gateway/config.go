package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid gateway config")

// Defaults used by DefaultConfig and for zero fields of a Config given to New.
const (
	DefaultDialTimeout           = 500 * time.Millisecond
	DefaultResponseHeaderTimeout = 15 * time.Second
	DefaultReadHeaderTimeout     = 5 * time.Second
	DefaultIdleTimeout           = 120 * time.Second
	DefaultMaxIdleConnsPerHost   = 256
	DefaultClientBodyTimeout     = 30 * time.Second
	DefaultClientWriteTimeout    = 30 * time.Second
	DefaultMaxConns              = 16384
	DefaultMaxConnsPerIP         = 1024
)

// Config tunes one gateway. The zero value of every field means "use the
// default" (see the constants above), except CORSOrigins, whose zero value
// means "no CORS". Fields are filled by cmd/herd from flags; DefaultConfig is
// the starting point.
type Config struct {
	// TLS, when set, makes the gateway's listener speak TLS with it (herd
	// sets GetCertificate to certificate files it reloads when they
	// change): clients connect with https, and upstreams are told so in
	// X-Forwarded-Proto. nil (the default) serves plain HTTP.
	TLS *tls.Config
	// UpstreamTLS is the client side of the node's certificate: RootCAs the
	// cluster CA, the node certificate presented. Instances registered with
	// TLS (a service host under --internal-tls) are dialled with it,
	// verified for the address dialled. nil (an --insecure node) makes
	// requests to such instances fail.
	UpstreamTLS *tls.Config
	// CORSOrigins lists the browser origins allowed to call services through
	// the gateway, each exactly as a browser sends it in the Origin header
	// ("https://app.example.com", "http://localhost:3000": lower-case scheme
	// and host, an optional port, no path). "*" alone allows every origin.
	// Empty (the default) means the gateway adds no CORS headers at all and
	// leaves CORS, preflights included, to the services themselves.
	CORSOrigins []string

	// DialTimeout bounds one TCP connect to an upstream instance. Zero means
	// DefaultDialTimeout (500ms): instances are on the same LAN, so a slow
	// connect means a dead or overloaded peer.
	DialTimeout time.Duration

	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers once the request is written; bodies (streams, SSE) are not
	// bounded. Zero means DefaultResponseHeaderTimeout (15s).
	ResponseHeaderTimeout time.Duration

	// ReadHeaderTimeout bounds how long a client may take to send request
	// headers (slowloris protection). Zero means DefaultReadHeaderTimeout (5s).
	ReadHeaderTimeout time.Duration

	// IdleTimeout is how long an idle client keep-alive connection is kept
	// open. Zero means DefaultIdleTimeout (120s). A new connection must
	// send its first request head within ReadHeaderTimeout instead.
	IdleTimeout time.Duration

	// ClientBodyTimeout bounds the wait for the next bytes of a request
	// body (each read of it, not the whole: slow uploads that keep moving
	// pass). A body that stops arriving is a 408. Zero means
	// DefaultClientBodyTimeout (30s).
	ClientBodyTimeout time.Duration

	// ClientWriteTimeout bounds how long the gateway waits for a client to
	// take more of an answer (each write makes progress or fails, so slow
	// readers that keep reading pass); a client that stops reading loses
	// the connection, and the upstream exchange behind it ends. Zero means
	// DefaultClientWriteTimeout (30s).
	ClientWriteTimeout time.Duration

	// MaxConns caps the gateway's client connections, MaxConnsPerIP those
	// from one client IP (clients in TrustedProxies are exempt from the
	// latter); a connection past either is answered 503 (reason
	// too_many_connections) and closed. Zero means DefaultMaxConns (16384)
	// and DefaultMaxConnsPerIP (1024).
	MaxConns, MaxConnsPerIP int

	// MaxIdleConnsPerHost is how many idle keep-alive connections are kept
	// per upstream address. Zero means DefaultMaxIdleConnsPerHost (256); Go's
	// own default of 2 exhausts ephemeral ports under load (golang/go#13801).
	MaxIdleConnsPerHost int

	// TrustedProxies are the networks whose X-Forwarded-For the gateway
	// keeps (appending the client's address); from anyone else it is
	// replaced. Empty: trust no one.
	TrustedProxies []netip.Prefix
	// DebugHeaders adds X-Herd-Upstream (the node that served the answer)
	// to every answer. Off by default, the header goes only to clients in
	// TrustedProxies: the public learns nothing of the internal topology.
	DebugHeaders bool

	// RateLimit is the sustained requests per second allowed to one client
	// IP, with bursts of RateBurst; over it the gateway answers 429 with
	// Retry-After. Zero (the default) means no limit.
	RateLimit float64
	// RateBurst is the token bucket's size; zero means max(1, RateLimit).
	RateBurst int

	// HedgeAfter, when positive, also sends an idempotent request to a
	// second instance when the first has not answered within it; the first
	// answer wins. Zero means no hedging.
	HedgeAfter time.Duration
	// HedgeAuto hedges after the service's observed p95 latency instead
	// (at least 10ms; none until there are enough samples).
	HedgeAuto bool

	// LocalNode is the name of the node the gateway runs on; with
	// PreferLocal, that node's instance of a service takes the traffic while
	// it is healthy (alive, not ejected).
	LocalNode   string
	PreferLocal bool

	// Balancer is the balancing policy: "p2c" (power of two choices over
	// peak-EWMA latency times requests in flight; "" means p2c),
	// "round-robin", "least-request" or "random"; all honour instance
	// weights. A service's instances may choose their own with the meta key
	// "herd.balancer".
	//
	// p2c sends most requests to the instances that answer fastest (on one
	// machine, usually the local one), so traffic is not spread evenly; every
	// live instance still gets requests: an idle instance's estimate decays
	// (600ms), and one not asked for 5s is asked once to refresh it.
	Balancer string
}

// DefaultConfig returns the configuration herd nodes run with unless told
// otherwise: no CORS, the default timeouts and pool size, p2c balancing.
func DefaultConfig() Config {
	return Config{
		Balancer:              BalancerP2C,
		DialTimeout:           DefaultDialTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		ReadHeaderTimeout:     DefaultReadHeaderTimeout,
		IdleTimeout:           DefaultIdleTimeout,
		MaxIdleConnsPerHost:   DefaultMaxIdleConnsPerHost,
		ClientBodyTimeout:     DefaultClientBodyTimeout,
		ClientWriteTimeout:    DefaultClientWriteTimeout,
		MaxConns:              DefaultMaxConns,
		MaxConnsPerIP:         DefaultMaxConnsPerIP,
	}
}

// Validate reports the first problem with c. Every error wraps
// ErrInvalidConfig and names the field.
func (c Config) Validate() error {
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"DialTimeout", c.DialTimeout},
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout},
		{"ReadHeaderTimeout", c.ReadHeaderTimeout},
		{"IdleTimeout", c.IdleTimeout},
		{"ClientBodyTimeout", c.ClientBodyTimeout},
		{"ClientWriteTimeout", c.ClientWriteTimeout},
	}
	for _, f := range durations {
		if f.d < 0 {
			return fmt.Errorf("%w: %s must not be negative, got %s", ErrInvalidConfig, f.name, f.d)
		}
	}
	if c.MaxConns < 0 || c.MaxConnsPerIP < 0 {
		return fmt.Errorf("%w: MaxConns and MaxConnsPerIP must not be negative", ErrInvalidConfig)
	}
	if c.MaxIdleConnsPerHost < 0 {
		return fmt.Errorf("%w: MaxIdleConnsPerHost must not be negative, got %d", ErrInvalidConfig, c.MaxIdleConnsPerHost)
	}
	if c.RateLimit < 0 || c.RateBurst < 0 {
		return fmt.Errorf("%w: RateLimit and RateBurst must not be negative", ErrInvalidConfig)
	}
	if c.Balancer == BalancerHash {
		return fmt.Errorf("%w: Balancer %q is chosen per service, with the instance meta %s and %s", ErrInvalidConfig, c.Balancer, MetaBalancer, MetaHashOn)
	}
	if _, ok := selectorFor(c.Balancer); !ok {
		return fmt.Errorf("%w: Balancer %q: want %s, %s, %s or %s", ErrInvalidConfig, c.Balancer,
			BalancerRoundRobin, BalancerP2C, BalancerLeastRequest, BalancerRandom)
	}
	for i, o := range c.CORSOrigins {
		if o == "*" {
			if len(c.CORSOrigins) > 1 {
				return fmt.Errorf("%w: CORSOrigins: \"*\" allows every origin and cannot be combined with others", ErrInvalidConfig)
			}
			continue
		}
		if err := validateOrigin(o); err != nil {
			return fmt.Errorf("%w: CORSOrigins[%d] %q: %v", ErrInvalidConfig, i, o, err)
		}
	}
	return nil
}

// validateOrigin checks that o is written the way browsers serialise an
// origin, so that the exact match at request time can succeed.
func validateOrigin(o string) error {
	if o == "" {
		return errors.New("empty origin")
	}
	if o == "null" {
		// Sandboxed iframes and file: pages all send "null"; allowing it
		// allows all of them.
		return errors.New(`"null" cannot be allowed safely`)
	}
	u, err := url.Parse(o)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must start with http:// or https://")
	}
	if u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || strings.HasSuffix(o, "#") {
		return errors.New("must be scheme://host[:port] with nothing after the host")
	}
	if o != strings.ToLower(o) {
		return errors.New("must be lower-case, as browsers send it")
	}
	return nil
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	orDefault(&c.DialTimeout, d.DialTimeout)
	orDefault(&c.ResponseHeaderTimeout, d.ResponseHeaderTimeout)
	orDefault(&c.ReadHeaderTimeout, d.ReadHeaderTimeout)
	orDefault(&c.IdleTimeout, d.IdleTimeout)
	orDefault(&c.MaxIdleConnsPerHost, d.MaxIdleConnsPerHost)
	orDefault(&c.ClientBodyTimeout, d.ClientBodyTimeout)
	orDefault(&c.ClientWriteTimeout, d.ClientWriteTimeout)
	orDefault(&c.MaxConns, d.MaxConns)
	orDefault(&c.MaxConnsPerIP, d.MaxConnsPerIP)
	orDefault(&c.Balancer, d.Balancer)
	return c
}

// orDefault sets *v to d when it is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}
