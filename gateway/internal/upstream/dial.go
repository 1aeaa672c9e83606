package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// dialer opens every connection to an instance: TCP, and for an instance that serves TLS (api.Instance.TLS, a
// node's service host under --internal-tls) TLS verified against the
// cluster CA for the address dialled, presenting the node certificate.
type dialer struct {
	tcp net.Dialer
	// tls is Config.TLS with a session cache, so a new connection
	// to an instance already met resumes instead of a full handshake; nil
	// on a node without a cluster certificate.
	tls              *tls.Config
	handshakeTimeout time.Duration
}

// errNoUpstreamTLS fails a request to a TLS instance from a gateway that
// has no cluster certificate to present.
var errNoUpstreamTLS = errors.New("the instance serves TLS and this gateway has no cluster certificate (is the node --insecure?)")

func newDialer(cfg Config) *dialer {
	d := &dialer{
		tcp: net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: keepAlive},
		// A handshake is a round trip or two on the same LAN, like the
		// connect, plus a signature: the same bound, at least a second.
		handshakeTimeout: max(cfg.DialTimeout, time.Second),
	}
	if cfg.TLS != nil {
		d.tls = cfg.TLS.Clone()
		if d.tls.ClientSessionCache == nil {
			d.tls.ClientSessionCache = tls.NewLRUClientSessionCache(0)
		}
	}
	return d
}

// dial opens a TCP connection to addr.
func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.tcp.DialContext(ctx, network, addr)
}

// dialTLS opens a TCP connection to addr and completes a TLS handshake on
// it, the server's certificate verified for addr's IP.
func (d *dialer) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.tls == nil {
		return nil, errNoUpstreamTLS
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	c, err := d.tcp.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := d.tls.Clone()
	cfg.ServerName = host
	tc := tls.Client(c, cfg)
	hctx, cancel := context.WithTimeout(ctx, d.handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}
