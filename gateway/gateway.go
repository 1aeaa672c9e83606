package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/gateway/internal/upstream"
)

// maxHeaderBytes bounds a client's request line and headers.
const maxHeaderBytes = 64 << 10

// Gateway routes /<service>/<rest> to a live instance of <service>. It is
// safe for concurrent use. Create it with New, serve with Serve (or mount
// Handler in a server of your own), stop it with Shutdown.
type Gateway struct {
	cfg      Config
	cat      Catalog
	live     Liveness
	log      *slog.Logger
	sel      selector
	services serviceStates
	cors     corsPolicy

	limiter     *limiter // nil without a rate limit
	rateLimited atomic.Uint64
	// rejected counts the requests answered by the gateway itself, by
	// rejectReasons.
	rejected [len(rejectReasons)]atomic.Uint64

	// client is the upstream client: one pool of connections for every
	// request; rtrip sends through it, retrying and hedging.
	client *upstream.Client
	rtrip  *retryTransport
	// front serves client connections; srv (net/http) serves those it
	// hands over (see front.go). Both run serve, the one request path.
	front *front
	srv   *http.Server

	// baseCtx is the parent of every request context; cancelBase aborts
	// whatever is still running when Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// tunnels counts upgraded (WebSocket and the like) connections, which
	// http.Server stops tracking once they are hijacked.
	tunnels tunnelTracker

	stopping atomic.Bool
	stopped  chan struct{} // closed when the first Shutdown returns
	stopErr  error         // what the first Shutdown returned
}

// New builds a gateway that routes with cat and live and logs to logger (nil
// discards). cfg is validated first; zero fields take their defaults. New
// starts nothing: no goroutine runs until Serve.
func New(cfg Config, cat Catalog, live Liveness, logger *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cat == nil {
		return nil, errors.New("gateway: nil Catalog")
	}
	if live == nil {
		return nil, errors.New("gateway: nil Liveness")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	sel, _ := selectorFor(cfg.Balancer)
	g := &Gateway{
		cfg:     cfg,
		cat:     cat,
		live:    live,
		log:     logger.With("component", "gateway"),
		sel:     sel,
		cors:    newCORSPolicy(cfg.CORSOrigins),
		stopped: make(chan struct{}),
	}
	g.client = upstream.New(upstream.Config{DialTimeout: cfg.DialTimeout, HeaderTimeout: cfg.ResponseHeaderTimeout,
		MaxIdlePerHost: cfg.MaxIdleConnsPerHost, TLS: cfg.UpstreamTLS})
	g.rtrip = &retryTransport{g: g, base: g.client}
	if cfg.RateLimit > 0 {
		g.limiter = newLimiter(cfg.RateLimit, cfg.RateBurst)
	}
	g.baseCtx, g.cancelBase = context.WithCancel(context.Background())
	g.srv = &http.Server{
		Handler:           http.HandlerFunc(g.serve),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// No ReadTimeout or WriteTimeout: they would cut uploads, streams
		// and SSE that are legitimately long (Kratos #3775).
		ErrorLog:    slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return g.baseCtx },
	}
	g.front = newFront(g.srv.Handler, g.srv, g.log, g.baseCtx)
	return g, nil
}

// Handler returns the gateway's http.Handler (serve, the path every request
// takes), for callers that run their own server. Shutdown does not drain
// requests served that way.
func (g *Gateway) Handler() http.Handler { return http.HandlerFunc(g.serve) }

// Serve answers requests on ln, which the caller has bound, until Shutdown.
// It closes ln when it returns. It returns nil after Shutdown (including when
// Shutdown ran before Serve) and the accept error otherwise.
func (g *Gateway) Serve(ln net.Listener) error {
	ln = newClientListener(ln, g)
	if g.cfg.TLS != nil {
		// The front and net/http read the decrypted stream; both see a
		// *tls.Conn, whose handshake runs at the first read.
		ln = tls.NewListener(ln, g.cfg.TLS)
	}
	err := g.front.serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("gateway: serve on %s: %w", ln.Addr(), err)
}

// Shutdown stops the gateway. It is safe to call more than once and before
// Serve; later calls wait for the first to finish (or for their own ctx) and
// return its result. In order, it:
//
//  1. closes the listeners, so no new connection is accepted, and closes
//     idle client connections;
//  2. waits for in-flight requests, then for upgraded connections
//     (WebSockets), to finish, until ctx is done;
//  3. cancels the hedge attempts that outlived their requests and waits
//     for them (briefly: cancelled, they end at once); if ctx ended first,
//     also cancels every remaining request's context (which aborts its
//     upstream exchange and tunnels) and closes every client connection,
//     then returns ctx's error;
//  4. closes the idle upstream connections.
func (g *Gateway) Shutdown(ctx context.Context) error {
	if !g.stopping.CompareAndSwap(false, true) {
		select {
		case <-g.stopped:
			return g.stopErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(g.stopped)
	g.stopErr = g.shutdown(ctx)
	return g.stopErr
}

func (g *Gateway) shutdown(ctx context.Context) error {
	g.front.close()            // step 1 for the front's connections
	err := g.srv.Shutdown(ctx) // steps 1 and 2 for net/http's
	if err == nil {
		err = g.front.wait(ctx) // step 2 for the front's
	}
	if err == nil {
		err = g.waitTunnels(ctx) // step 2 for upgraded connections
	}
	// Step 3; after a full drain it only cancels the hedge attempts that
	// outlived their requests, which end at once.
	g.cancelBase()
	if !g.rtrip.waitBackground(backgroundGrace) {
		g.log.Warn("gateway: hedge attempts still running after shutdown", "waited", backgroundGrace)
	}
	if err != nil {
		if cerr := g.srv.Close(); cerr != nil {
			g.log.Warn("closing client connections", "err", cerr)
		}
		g.front.closeAll()
	}
	g.client.CloseIdleConnections() // step 4
	if err != nil {
		return fmt.Errorf("gateway: shutdown: %w", err)
	}
	return nil
}

// waitTunnels waits until every upgraded connection has closed or ctx is
// done.
func (g *Gateway) waitTunnels(ctx context.Context) error {
	idle := g.tunnels.idle()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backgroundGrace bounds Shutdown's wait for the cancelled hedge attempts
// that outlived their requests; cancelled, they end within milliseconds.
const backgroundGrace = 2 * time.Second

// tunnelTracker counts upgraded connections. Only upgrade requests touch
// it, so its mutex is not on the ordinary request path. Unlike a WaitGroup it
// tolerates new tunnels while somebody waits (a server of the caller's own
// may still be running Handler).
type tunnelTracker struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; nil while n == 0
}

func (t *tunnelTracker) add() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
}

func (t *tunnelTracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		close(t.zero)
		t.zero = nil
	}
}

// idle returns a channel closed once no tunnel is open, or nil if none is.
func (t *tunnelTracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.zero == nil {
		return nil
	}
	return t.zero
}
