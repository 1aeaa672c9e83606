package node

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrDataDirInUse: another herd process holds the data dir.
var ErrDataDirInUse = errors.New("data dir is in use by another herd process")

// dataDir is an opened, locked data dir.
type dataDir struct {
	path string
	lock *os.File
	// id is the node's identity, created on first use and kept.
	id string
}

// openDataDir creates path if needed, checks it is writable, takes an
// exclusive lock on it and reads (or creates) the node ID. Nothing in an
// existing dir is changed but the lock file and, on first use, the ID.
func openDataDir(path string) (*dataDir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir %s: cannot create it: %w", path, err)
	}
	probe, err := os.CreateTemp(path, ".write-probe-*")
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s is not writable: %w", path, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	lock, err := os.OpenFile(filepath.Join(path, "herd.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: open lock file: %w", path, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("--data-dir %s: %w", path, ErrDataDirInUse)
	}
	d := &dataDir{path: path, lock: lock}
	if d.id, err = d.nodeID(); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *dataDir) nodeID() (string, error) {
	p := filepath.Join(d.path, "node-id")
	b, err := os.ReadFile(p)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if len(id) == 32 {
			if _, err := hex.DecodeString(id); err == nil {
				return id, nil
			}
		}
		return "", fmt.Errorf("--data-dir %s: node-id file is corrupt (%q)", d.path, id)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("--data-dir %s: read node-id: %w", d.path, err)
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	id := hex.EncodeToString(raw)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("--data-dir %s: write node-id: %w", d.path, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("--data-dir %s: write node-id: %w", d.path, err)
	}
	return id, nil
}

func (d *dataDir) close() {
	if d.lock != nil {
		_ = syscall.Flock(int(d.lock.Fd()), syscall.LOCK_UN)
		d.lock.Close()
		d.lock = nil
	}
}

// peersFile keeps the gossip addresses of the nodes last seen alive, so a
// restarted node finds its cluster again without --join (the first node of a
// cluster is usually started without it).
const peersFile = "gossip-peers.json"

// savePeers records addrs, replacing the previous list atomically.
func (d *dataDir) savePeers(addrs []string) error { return d.saveList(peersFile, addrs) }

// loadPeers returns the recorded addresses; none when there is no record.
func (d *dataDir) loadPeers() []string { return d.loadList(peersFile) }

// votersFile keeps the registry client URLs of the voters last seen, so a
// spare that missed a gossip key rotation can still read the current
// keyring from the registry (over mutual TLS, which needs no gossip) and
// rejoin.
const votersFile = "registry-voters.json"

func (d *dataDir) saveVoters(urls []string) error { return d.saveList(votersFile, urls) }
func (d *dataDir) loadVoters() []string           { return d.loadList(votersFile) }

func (d *dataDir) saveList(file string, items []string) error {
	b, err := json.Marshal(items)
	if err != nil {
		return err
	}
	p := filepath.Join(d.path, file)
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

func (d *dataDir) loadList(file string) []string {
	b, err := os.ReadFile(filepath.Join(d.path, file))
	if err != nil {
		return nil
	}
	var items []string
	if json.Unmarshal(b, &items) != nil {
		return nil
	}
	return items
}

// proposalFile keeps the proposal of the initial cluster this node formed
// with --bootstrap-expect, so that after a restart it still tells the
// founders that have not started yet that it belongs to their cluster.
const proposalFile = "bootstrap-proposal"

func (d *dataDir) saveProposal(p string) error {
	return os.WriteFile(filepath.Join(d.path, proposalFile), []byte(p+"\n"), 0o600)
}

func (d *dataDir) loadProposal() string {
	b, err := os.ReadFile(filepath.Join(d.path, proposalFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
