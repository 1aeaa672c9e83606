package registry

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcd's known-benign messages on herd's normal paths come out at debug;
// the same message with another error, and real errors, stay as they are.
func TestEtcdLogLevels(t *testing.T) {
	var buf bytes.Buffer
	z := newZapLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), zapcore.InfoLevel, nil)
	z.Warn("rejecting member add request; local member has not been connected to majority peers, reconfigure breaks active quorum", zap.Error(errors.New("etcdserver: unhealthy cluster")))
	z.Error("rejecting promote learner: learner is not ready", zap.Float64("learner-ready-percent", 0))
	z.Error("failed to update storage version", zap.String("cluster-version", "3.7.0"), zap.Error(errors.New("cannot detect storage schema version: missing term information")))
	if buf.Len() != 0 {
		t.Fatalf("benign messages logged at info or above:\n%s", buf.String())
	}
	z.Error("failed to update storage version", zap.Error(errors.New("disk full")))
	z.Error("failed to publish local member to cluster through raft")
	out := buf.String()
	if !strings.Contains(out, `level=ERROR msg="failed to update storage version"`) || !strings.Contains(out, "disk full") ||
		!strings.Contains(out, `level=ERROR msg="failed to publish`) {
		t.Fatalf("real errors not at ERROR:\n%s", out)
	}
}
