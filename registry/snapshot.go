package registry

import (
	"context"
	"fmt"
	"io"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap/zapcore"
)

// Snapshot streams a snapshot of the whole registry from a member cli
// reaches that has a leader (a partitioned member would serve old data).
// Errors of the member come back here, before any byte is streamed. The
// caller closes the reader; cancelling ctx aborts the stream.
func Snapshot(ctx context.Context, cli *clientv3.Client) (io.ReadCloser, error) {
	resp, err := cli.SnapshotWithVersion(clientv3.WithRequireLeader(ctx))
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", unavailable(err))
	}
	return resp.Snapshot, nil
}

// RestoreSnapshot makes cfg.Dir a new one-member registry holding the data
// of the snapshot file at path; `herd agent` with the same name, data dir
// and addresses then starts it as a new cluster. cfg.Dir must not hold a
// member. The snapshot's integrity hash is checked.
func RestoreSnapshot(path string, cfg MemberConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if HasData(cfg.Dir) {
		return fmt.Errorf("restore: %s already holds a member: %w", cfg.Dir, ErrHasData)
	}
	if entries, err := os.ReadDir(cfg.Dir); err == nil {
		if len(entries) > 0 {
			return fmt.Errorf("restore: %s is not empty", cfg.Dir)
		}
		if err := os.Remove(cfg.Dir); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	token, err := newClusterToken()
	if err != nil {
		return err
	}
	lg := newZapLogger(cfg.log().With("component", "restore"), zapcore.WarnLevel, nil)
	err = snapshot.NewV3(lg).Restore(snapshot.RestoreConfig{
		SnapshotPath:        path,
		Name:                cfg.Name,
		OutputDataDir:       cfg.Dir,
		PeerURLs:            []string{cfg.PeerURL()},
		InitialCluster:      cfg.Name + "=" + cfg.PeerURL(),
		InitialClusterToken: token,
	})
	if err != nil {
		_ = os.RemoveAll(cfg.Dir)
		return fmt.Errorf("restore %s: %w", path, err)
	}
	cfg.log().Info("registry restored from a snapshot", "snapshot", path, "dir", cfg.Dir)
	return nil
}
