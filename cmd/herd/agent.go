package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/herdcluster/herd/node"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	cfg := node.DefaultConfig()
	var (
		join, services, cors []string
		logLevel, logFormat  string
		tokenFile            string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a herd node",
		Long: `Run a herd node: an embedded etcd member, gossip, the built-in services and the gateway.

Without --join and without data, the node bootstraps a new cluster. With --join it joins the
cluster of the given node(s). With data in --data-dir it restarts as the member it was.
Every flag can also be set with an environment variable HERD_<FLAG>, e.g. HERD_JOIN.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := bindEnv(cmd.Flags()); err != nil {
				return err
			}
			logger, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Join = flattenList(join)
			cfg.Services = flattenList(services)
			cfg.CORSOrigins = flattenList(cors)
			cfg.TrustedProxies = flattenList(cfg.TrustedProxies)
			cfg.APIAllowedHosts = flattenList(cfg.APIAllowedHosts)
			cfg.APIAllowedOrigins = flattenList(cfg.APIAllowedOrigins)
			if !cmd.Flags().Changed("data-dir") && os.Getenv("HERD_DATA_DIR") == "" {
				cfg.DataDir = filepath.Join("data", cfg.Name)
			}
			if tokenFile != "" {
				if cfg.JoinToken != "" {
					return errors.New("--join-token and --join-token-file: give one of them")
				}
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--join-token-file: %w", err)
				}
				cfg.JoinToken = strings.TrimSpace(string(b))
			}
			cfg.Version = version
			cfg.Logger = logger
			cfg.Out = cmd.OutOrStdout()
			return runAgent(cfg, logger)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "node name, a DNS label unique in the cluster (default: the host name)")
	f.StringVar(&cfg.BindIP, "bind", cfg.BindIP, "IP address every listener binds")
	f.StringVar(&cfg.AdvertiseIP, "advertise", "", "IP address peers use to reach this node (default: --bind)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "data directory (default: ./data/<name>)")
	f.StringSliceVar(&join, "join", nil, "gossip address (host or host:port) of a node to join; repeatable and comma-separated")
	f.DurationVar(&cfg.RetryJoinTimeout, "retry-join-timeout", 0, "give up and exit if joining takes longer than this (0: keep trying)")
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 0, "form a new cluster once this many nodes with the same value meet through --join (0: the node without --join bootstraps alone)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "the cluster's join token, for a node to be admitted (--join or --bootstrap-expect without data); a secret: prefer HERD_JOIN_TOKEN or --join-token-file")
	f.StringVar(&tokenFile, "join-token-file", "", "file holding the join token")
	f.BoolVar(&cfg.Insecure, "insecure", false, "INSECURE: plaintext gossip, registry and agent API with no authentication (anyone who reaches the ports owns the cluster)")
	f.DurationVar(&cfg.CertValidity, "tls-cert-validity", 0, "validity of the certificates this node issues (0: a year); nodes renew theirs after two thirds")
	_ = f.MarkHidden("tls-cert-validity")
	f.BoolVar(&cfg.ForceNewCluster, "force-new-cluster", false, "restart the member in --data-dir as the only member of a new cluster, keeping its data (after losing a majority; remove the flag afterwards)")
	f.IntVar(&cfg.MaxVoters, "max-voters", cfg.MaxVoters, "most registry voters (odd); other nodes are spares")
	f.DurationVar(&cfg.DeadVoterTimeout, "dead-voter-timeout", cfg.DeadVoterTimeout, "how long a voter must be dead before the autopilot replaces it")
	f.Uint64Var(&cfg.RaftSnapshotCount, "raft-snapshot-count", cfg.RaftSnapshotCount, "registry log entries between snapshots, and how far behind a member is sent a snapshot instead (0: etcd's default, 10000)")
	f.IntVar(&cfg.GossipPort, "gossip-port", cfg.GossipPort, "gossip port (TCP and UDP)")
	f.IntVar(&cfg.ClientPort, "client-port", cfg.ClientPort, "etcd client port")
	f.IntVar(&cfg.PeerPort, "peer-port", cfg.PeerPort, "etcd peer (Raft) port")
	f.IntVar(&cfg.GatewayPort, "gateway-port", cfg.GatewayPort, "gateway port: public service traffic")
	f.IntVar(&cfg.APIPort, "api-port", cfg.APIPort, "agent HTTP API port")
	f.IntVar(&cfg.ServicePort, "service-port", cfg.ServicePort, "port of the service handlers this node hosts")
	f.StringSliceVar(&services, "services", cfg.Services, "built-in services this node hosts (empty: none)")
	f.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of service definitions, one JSON file per instance, registered at start and re-read on SIGHUP or herd reload")
	f.StringVar(&cfg.Balancer, "balancer", "p2c", "gateway balancing policy: p2c (power of two choices over peak-EWMA latency x requests in flight: favours the fastest instances, still reaches every one), round-robin, least-request or random (a service may choose its own with the instance meta herd.balancer)")
	f.BoolVar(&cfg.PreferLocal, "prefer-local", false, "gateway: send a service's traffic to this node's own instance while it is healthy")
	f.StringSliceVar(&cfg.TrustedProxies, "trusted-proxies", nil, "CIDRs whose X-Forwarded-For the gateway keeps (default: none, it is replaced)")
	f.Float64Var(&cfg.RateLimit, "rate-limit", 0, "requests per second per client IP at the gateway, 429 beyond (0: no limit)")
	f.IntVar(&cfg.RateBurst, "rate-burst", 0, "burst allowed above --rate-limit (0: one second's worth)")
	f.DurationVar(&cfg.DialTimeout, "dial-timeout", 500*time.Millisecond, "gateway: upstream connect timeout")
	f.DurationVar(&cfg.ResponseHeaderTimeout, "response-header-timeout", 15*time.Second, "gateway: upstream response-header timeout")
	f.StringVar(&cfg.HedgeAfter, "hedge-after", "auto", "gateway: also ask a second instance when an idempotent request has no answer by then: auto (the service's p95, within 10ms-1s), a duration, or off; hedges stay under a tenth of the requests")
	f.StringVar(&cfg.GatewayTLSCert, "gateway-tls-cert", "", "PEM certificate the gateway terminates TLS with (read again when it changes; default: plain HTTP)")
	f.StringVar(&cfg.GatewayTLSKey, "gateway-tls-key", "", "PEM key of --gateway-tls-cert")
	f.BoolVar(&cfg.InternalTLS, "internal-tls", false, "serve this node's services with HTTPS and its node certificate, to cluster members only: peers' gateways dial them with TLS")
	f.DurationVar(&cfg.ClientBodyTimeout, "client-body-timeout", node.DefaultClientBodyTimeout, "gateway: longest wait for the next bytes of a request body (408 after)")
	f.DurationVar(&cfg.ClientWriteTimeout, "client-write-timeout", node.DefaultClientWriteTimeout, "gateway: longest wait for a client to take more of an answer (the connection is closed after)")
	f.IntVar(&cfg.MaxConns, "max-conns", node.DefaultMaxConns, "gateway: most client connections in all (503 past it)")
	f.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", node.DefaultMaxConnsPerIP, "gateway: most client connections from one IP, --trusted-proxies exempt (503 past it)")
	f.BoolVar(&cfg.EnableDebug, "enable-debug", false, "agent API: serve Go's runtime profiles at /debug/pprof/ (operator tokens only)")
	f.BoolVar(&cfg.DebugHeaders, "debug-headers", false, "gateway: name the node that served each answer in X-Herd-Upstream, for every client (default: only for --trusted-proxies)")
	f.StringSliceVar(&cfg.APIAllowedHosts, "api-allowed-hosts", nil, "Host names the agent API answers to besides its own addresses and node name (DNS rebinding protection; default: none)")
	f.StringSliceVar(&cfg.APIAllowedOrigins, "api-allowed-origins", nil, "browser origins (scheme://host[:port]) allowed to call the agent API (default: none: cross-origin requests are refused)")
	f.BoolVar(&cfg.AnonymousRead, "anonymous-read", false, "agent API: let requests without a token read members, services and metrics (default: every request needs a token)")
	f.BoolVar(&cfg.MetricsAnonymous, "metrics-anonymous", false, "agent API: serve /metrics without a token (default: it needs the read policy)")
	f.StringSliceVar(&cors, "cors-origins", nil, "origins the gateway allows for CORS (default: none, no CORS headers)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// flattenList splits every comma-separated item of a repeated flag.
func flattenList(items []string) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, splitList(it)...)
	}
	return out
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// runAgent runs the node until SIGINT or SIGTERM, then stops it gracefully;
// a second signal forces the exit.
func runAgent(cfg node.Config, logger *slog.Logger) error {
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// SIGHUP reloads the --config-dir; it must not end the process, even
	// while the node starts (a reload asked for then runs once it has).
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- n.Start(ctx) }()

	var runErr error
	select {
	case err := <-started:
		if err != nil {
			return err
		}
	case sig := <-sigs:
		logger.Info("signal received while starting; stopping", "signal", sig.String())
		cancel()
		err := <-started
		if err == nil {
			// Start finished first: stop gracefully all the same.
			stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer stopCancel()
			return n.Close(stopCtx)
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}

	for stop := false; !stop; {
		select {
		case <-hups:
			if n.RequestReload() {
				logger.Info("SIGHUP: reading the service definitions again", "dir", cfg.ConfigDir)
			} else {
				logger.Warn("SIGHUP: this node has no --config-dir to read again; nothing else is reloaded")
			}
		case sig := <-sigs:
			logger.Info("signal received; stopping gracefully (send it again to force)", "signal", sig.String())
			stop = true
		case err := <-n.Err():
			if errors.Is(err, node.ErrLeft) {
				logger.Info("left the cluster; stopping")
			} else {
				logger.Error("fatal node error; stopping", "err", err)
				runErr = err
			}
			stop = true
		}
	}
	go func() {
		sig := <-sigs
		logger.Error("second signal: forcing exit", "signal", sig.String())
		os.Exit(1)
	}()
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	if err := n.Close(stopCtx); err != nil {
		logger.Warn("stopped with errors", "err", err)
	}
	return runErr
}
