package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors callers branch on.
var (
	// ErrUnavailable: the registry cannot take writes now (no quorum, no
	// leader, the member unreachable, or the node's lease not held yet).
	ErrUnavailable = errors.New("registry unavailable")
	// ErrConflict: the key belongs to an instance of another node.
	ErrConflict = errors.New("instance owned by another node")
	// ErrNotFound: no such instance of this node.
	ErrNotFound = errors.New("instance not found")
	// ErrNoLease: the node holds no lease, so the write was not even sent:
	// it certainly did not happen. It is also an ErrUnavailable.
	ErrNoLease = fmt.Errorf("%w: this node holds no lease yet (the registry has no quorum or is unreachable); nothing was written", ErrUnavailable)
)

// NewClient returns an etcd client for endpoints whose own log lines go to
// logger at warn and above. tlsCfg, when set, is used for https endpoints
// (herd's: the cluster CA as the only root and the node's certificate as
// client certificate). It does not wait for a connection: requests fail or
// wait according to their context.
func NewClient(endpoints []string, tlsCfg *tls.Config, logger *slog.Logger) (*clientv3.Client, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		AutoSyncInterval:     0,
		TLS:                  tlsCfg,
		Logger:               newZapLogger(logger.With("component", "etcd-client"), zapcore.ErrorLevel, nil),
	})
	if err != nil {
		return nil, fmt.Errorf("registry client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// errNotSupportedForLearner is what a learner answers to every request but
// Status and serializable reads; the client has no variable for it.
var errNotSupportedForLearner = rpctypes.Error(rpctypes.ErrGRPCNotSupportedForLearner)

// errLeaseNotFound is what revoking a lease that is already gone answers.
var errLeaseNotFound = rpctypes.ErrLeaseNotFound

// unavailable wraps the etcd errors that mean "no quorum or unreachable" in
// ErrUnavailable, so the API can answer 503.
func unavailable(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrStopped),
		errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrNotLeader),
		errors.Is(err, rpctypes.ErrUnhealthy),
		errors.Is(err, rpctypes.ErrLeaseNotFound),
		errors.Is(err, rpctypes.ErrNoSpace),
		errors.Is(err, rpctypes.ErrTooManyRequests),
		errors.Is(err, rpctypes.ErrNotCapable),
		errors.Is(err, errNotSupportedForLearner):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if clientv3.IsConnCanceled(err) {
		return err
	}
	// gRPC Unavailable (connection refused, member down) also means no
	// quorum from where we stand.
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
