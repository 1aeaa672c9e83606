package services

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/herdcluster/herd/api"
)

// Builtin lists the built-in services, in the order they are served.
var builtin = []string{"hello", "echo"}

// Builtin returns the names of the built-in services.
func Builtin() []string { return slices.Clone(builtin) }

// BuiltinCheckInterval is how often a built-in service's http check runs.
const BuiltinCheckInterval = 10 * time.Second

// Registrar is the registry's client API as the host uses it. Register
// keeps an instance registered under the node's lease; both calls are safe
// for concurrent use and bounded by ctx.
type Registrar interface {
	Register(ctx context.Context, in api.Instance) error
	Deregister(ctx context.Context, service, id string) error
}

// Config configures a Host.
type Config struct {
	// Node is the node name: the instance ID of every built-in service and
	// the "node" field of their answers.
	Node string
	// AdvertiseIP is the address peers' gateways dial.
	AdvertiseIP string
	// Port is the service port the host serves on.
	Port int
	// Services are the built-in services to host; empty hosts none.
	Services []string
	// ReadHeaderTimeout bounds reading request headers (default 5s).
	ReadHeaderTimeout time.Duration
	// TLS, when set, serves HTTPS with it (--internal-tls: the node
	// certificate, a cluster client certificate required) and registers
	// every instance with TLS set, so gateways dial it with theirs.
	TLS *tls.Config
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if err := api.ValidateName("node", c.Node); err != nil {
		return err
	}
	if net.ParseIP(c.AdvertiseIP) == nil {
		return fmt.Errorf("services: advertise IP %q is not an IP address", c.AdvertiseIP)
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("services: port %d is not in 1-65535", c.Port)
	}
	for _, s := range c.Services {
		if !slices.Contains(builtin, s) {
			return fmt.Errorf("services: unknown service %q (built-in: %v)", s, builtin)
		}
	}
	return nil
}

// Host serves the built-in services and keeps them registered.
type Host struct {
	cfg    Config
	reg    Registrar
	logger *slog.Logger
	srv    *http.Server
	mux    *http.ServeMux

	mu         sync.Mutex
	registered map[string]bool
}

// NewHost returns a host for cfg that registers through reg.
func NewHost(cfg Config, reg Registrar, logger *slog.Logger) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = 5 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Host{cfg: cfg, reg: reg, logger: logger.With("component", "services"), mux: http.NewServeMux(), registered: map[string]bool{}}
	for _, s := range cfg.Services {
		prefix := "/" + s
		var handler http.Handler
		switch s {
		case "hello":
			handler = helloHandler(cfg.Node, prefix)
		case "echo":
			handler = echoHandler(cfg.Node)
		}
		h.mux.Handle(prefix, handler)
		h.mux.Handle(prefix+"/", handler)
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no service here at "+r.URL.Path)
	})
	h.srv = &http.Server{Handler: h.mux, ReadHeaderTimeout: cfg.ReadHeaderTimeout, IdleTimeout: 120 * time.Second}
	return h, nil
}

// Handler serves every hosted service under its prefix.
func (h *Host) Handler() http.Handler { return h.mux }

// Instances returns the instances the host registers.
func (h *Host) Instances() []api.Instance {
	out := make([]api.Instance, 0, len(h.cfg.Services))
	for _, s := range h.cfg.Services {
		out = append(out, h.instance(s))
	}
	return out
}

// instance is the built-in service s's instance, its defaults filled.
func (h *Host) instance(s string) api.Instance {
	in := api.Instance{
		ID: h.cfg.Node, Service: s, Node: h.cfg.Node,
		Address: h.cfg.AdvertiseIP, Port: h.cfg.Port, Path: "/" + s,
		Tags: []string{"builtin"}, TLS: h.cfg.TLS != nil,
		// A real check of the handler, as gateways see it; passing
		// from the start, as the process that registers it serves it.
		Checks: []api.Check{{Name: "http", Type: api.CheckHTTP, Path: "/" + s, Interval: api.Duration(BuiltinCheckInterval), Status: api.HealthPassing}},
	}
	in.Normalize()
	return in
}

// Serve serves on ln until Shutdown; it returns nil after Shutdown.
func (h *Host) Serve(ln net.Listener) error {
	if h.cfg.TLS != nil {
		ln = tls.NewListener(ln, h.cfg.TLS)
	}
	if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("services: serve: %w", err)
	}
	return nil
}

// RegisterAll registers every hosted service, retrying each with jittered
// backoff until it is in or ctx is done (the registry may have no quorum
// yet when the node starts). Once in, the registrar keeps it there.
func (h *Host) RegisterAll(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var failed error
		for _, in := range h.Instances() {
			h.mu.Lock()
			done := h.registered[in.Service]
			h.mu.Unlock()
			if done {
				continue
			}
			if err := h.reg.Register(ctx, in); err != nil {
				failed = fmt.Errorf("register %s: %w", in.Service, err)
				continue
			}
			h.mu.Lock()
			h.registered[in.Service] = true
			h.mu.Unlock()
			h.logger.Info("service registered", "service", in.Service, "address", fmt.Sprintf("%s:%d", in.Address, in.Port))
		}
		if failed == nil {
			return nil
		}
		if attempt == 1 || attempt%20 == 0 {
			h.logger.Warn("cannot register services yet; retrying", "attempt", attempt, "err", failed)
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// Shutdown stops accepting requests and waits for those in flight until ctx
// is done. Deregistration is not done here: the node revokes its lease
// first, which removes every instance at once.
func (h *Host) Shutdown(ctx context.Context) error {
	if err := h.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("services: shutdown: %w", err)
	}
	return nil
}
