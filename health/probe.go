package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/herdcluster/herd/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// prober runs one kind of probe against an instance.
type prober interface {
	// probe runs once within ctx and returns the result's status and
	// output.
	probe(ctx context.Context) (status, output string)
	close()
}

// target is the host:port a check probes.
func target(in api.Instance, c api.Check) string {
	port := in.Port
	if c.Port != 0 {
		port = c.Port
	}
	return net.JoinHostPort(in.Address, strconv.Itoa(port))
}

func newProber(in api.Instance, c api.Check, clients *clients) prober {
	switch c.Type {
	case api.CheckHTTP:
		scheme, hc := "http", clients.plain
		if in.TLS {
			scheme, hc = "https", clients.tls
		}
		return &httpProbe{url: scheme + "://" + target(in, c) + c.Path, client: hc}
	case api.CheckTCP:
		return &tcpProbe{addr: target(in, c)}
	case api.CheckGRPC:
		return &grpcProbe{addr: target(in, c), service: c.GRPCService, tls: clients.tlsConfig(in.TLS)}
	}
	return nil
}

// clients are the HTTP clients of every http check of a runner, and the
// TLS configuration of checks of instances that serve TLS. Keep-alives are
// off, as in Consul: each run makes a new connection, so a service that
// stops accepting them is seen, not hidden behind an old connection.
type clients struct {
	plain, tls *http.Client
	tlsCfg     *tls.Config
}

func newClients(tlsCfg *tls.Config) *clients {
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	mk := func(tc *tls.Config) *http.Client {
		return &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: tc, Proxy: nil},
			// A check does not follow redirects: a 3xx is an answer the
			// service gives, and following it could send the check to
			// any host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &clients{plain: mk(nil), tls: mk(tlsCfg.Clone()), tlsCfg: tlsCfg}
}

// tlsConfig is a copy of the TLS configuration when on, nil otherwise.
func (c *clients) tlsConfig(on bool) *tls.Config {
	if !on {
		return nil
	}
	return c.tlsCfg.Clone()
}

type httpProbe struct {
	url    string
	client *http.Client
}

func (p *httpProbe) probe(ctx context.Context) (string, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return api.HealthCritical, err.Error()
	}
	req.Header.Set("User-Agent", "herd-health-check")
	req.Header.Set("Accept", "text/plain, text/*, */*")
	resp, err := p.client.Do(req)
	if err != nil {
		return api.HealthCritical, fmt.Sprintf("GET %s: %s", p.url, errText(ctx, err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, api.MaxCheckOutput))
	out := fmt.Sprintf("HTTP GET %s: %s", p.url, resp.Status)
	if len(body) > 0 {
		out += " Output: " + clean(string(body))
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return api.HealthPassing, out
	case resp.StatusCode == http.StatusTooManyRequests:
		return api.HealthWarning, out
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return api.HealthCritical, out + " (checks do not follow redirects)"
	default:
		return api.HealthCritical, out
	}
}

func (p *httpProbe) close() {}

type tcpProbe struct{ addr string }

func (p *tcpProbe) probe(ctx context.Context) (string, string) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return api.HealthCritical, fmt.Sprintf("TCP connect %s: %s", p.addr, errText(ctx, err))
	}
	conn.Close()
	return api.HealthPassing, fmt.Sprintf("TCP connect %s: Success", p.addr)
}

func (p *tcpProbe) close() {}

// grpcProbe keeps one client connection for the check's life (gRPC
// reconnects it by itself); each run is one Check call.
type grpcProbe struct {
	addr, service string
	tls           *tls.Config

	mu   sync.Mutex
	conn *grpc.ClientConn
}

func (p *grpcProbe) probe(ctx context.Context) (string, string) {
	conn, err := p.dial()
	if err != nil {
		return api.HealthCritical, fmt.Sprintf("gRPC %s: %s", p.addr, err)
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: p.service})
	if err != nil {
		return api.HealthCritical, fmt.Sprintf("gRPC health check %s (service %q): %s", p.addr, p.service, errText(ctx, err))
	}
	out := fmt.Sprintf("gRPC health check %s (service %q): %s", p.addr, p.service, resp.GetStatus())
	if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
		return api.HealthPassing, out
	}
	return api.HealthCritical, out
}

func (p *grpcProbe) dial() (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		return p.conn, nil
	}
	creds := insecure.NewCredentials()
	if p.tls != nil {
		creds = credentials.NewTLS(p.tls)
	}
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	p.conn = conn
	return conn, nil
}

func (p *grpcProbe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

// errText says a run timed out in those words.
func errText(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "timed out: " + err.Error()
	}
	return err.Error()
}

// clean makes output safe to show and store: valid UTF-8, no control
// characters but newlines and tabs, at most MaxCheckOutput bytes.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r >= ' ' && r != 0x7f {
			return r
		}
		return -1
	}, s)
	return truncate(s, api.MaxCheckOutput)
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
