package registry

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger returns a zap logger that writes through logger, so etcd's own
// log lines come out in herd's format with herd's fields. etcd is chatty at
// info, so its records below minLevel are dropped. Once *quiet is set (the
// member is closing, and etcd reports every listener it closes as an error)
// records are passed on at debug level.
func newZapLogger(logger *slog.Logger, minLevel zapcore.Level, quiet *atomic.Bool) *zap.Logger {
	if quiet == nil {
		quiet = new(atomic.Bool)
	}
	return zap.New(&slogCore{logger: logger, min: minLevel, quiet: quiet})
}

// slogCore is a zapcore.Core that hands each entry to an slog.Logger.
type slogCore struct {
	logger *slog.Logger
	min    zapcore.Level
	quiet  *atomic.Bool
	attrs  []any
}

var _ zapcore.Core = (*slogCore)(nil)

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.min && c.logger.Enabled(context.Background(), c.level(l))
}

func (c *slogCore) level(l zapcore.Level) slog.Level {
	if c.quiet.Load() {
		return slog.LevelDebug
	}
	return slogLevel(l)
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.attrs = append(append([]any(nil), c.attrs...), fieldAttrs(fields)...)
	return &clone
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if benign[e.Message] {
		e.Level = zapcore.DebugLevel
	}
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// benign lists etcd messages that herd's normal paths produce and that ask
// nothing of an operator; they are passed on at debug level:
//   - every member at start: herd serves gRPC and HTTP on one client port
//     on purpose, and does not use etcd's auth tokens;
//   - a joiner: the leader refuses to add a learner until it has heard
//     from a majority since it started (herd's join asks again until it
//     is added, and says so itself if it gives up);
//   - the autopilot: the leader refuses to promote a learner that has not
//     caught up yet (herd asks again; a promotion that never happens is
//     its own warning).
var benign = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.":                                  true,
	"simple token is not cryptographically signed":                                                                          true,
	"rejecting member add request; local member has not been connected to majority peers, reconfigure breaks active quorum": true,
	"rejecting promote learner: learner is not ready":                                                                       true,
}

// benignWith lists etcd messages that are benign only with this error: a
// learner that has not applied a snapshot yet cannot tell its storage
// version, and etcd tries again (it is an error for a voter).
var benignWith = map[string]string{
	"failed to update storage version": "missing term information",
}

// quiet reports whether an entry is a benign one.
func quietEntry(msg string, fields []zapcore.Field) bool {
	if benign[msg] {
		return true
	}
	want, ok := benignWith[msg]
	if !ok {
		return false
	}
	for _, f := range fields {
		if f.Key == "error" {
			if err, isErr := f.Interface.(error); isErr && strings.Contains(err.Error(), want) {
				return true
			}
		}
	}
	return false
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	args := append(append([]any(nil), c.attrs...), fieldAttrs(fields)...)
	if e.LoggerName != "" {
		args = append(args, "logger", e.LoggerName)
	}
	level := c.level(e.Level)
	if quietEntry(e.Message, fields) {
		level = slog.LevelDebug
	}
	c.logger.Log(context.Background(), level, e.Message, args...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l >= zapcore.WarnLevel:
		return slog.LevelWarn
	case l >= zapcore.InfoLevel:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

func fieldAttrs(fields []zapcore.Field) []any {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		out = append(out, k, v)
	}
	return out
}
