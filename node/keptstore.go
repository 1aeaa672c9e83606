package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// The registrations made through the agent API survive a restart of the
// node in its data dir, in two files:
//
//	instances.json  a snapshot: every kept instance (the format herd kept
//	                them in before the log existed)
//	instances.log   every change since, one JSON line each:
//	                {"put": {instance}} or {"delete": "service/id"}
//
// A change is acknowledged once its line is synced to disk, so it survives
// a crash of the machine. Concurrent changes share one fsync (group
// commit): a change costs one appended line, whatever the node holds. Once
// the log has more lines than compactAt (and than twice the instances
// kept), the next change writes a new snapshot and starts the log afresh;
// replaying an old log over a newer snapshot changes nothing (the last line
// of a key is the snapshot's state of it), so a crash between the two
// steps loses nothing. A line that does not parse (the torn end of a write
// that was never acknowledged) is skipped.
const (
	instancesFile = "instances.json"
	instancesLog  = "instances.log"
	compactAt     = 4096
)

// keptStore is the registrar's Store in the data dir. Safe for concurrent
// use.
type keptStore struct {
	dir    string
	logger *slog.Logger

	mu    sync.Mutex // guards the fields below
	log   *os.File
	live  map[string]api.Instance // by service/id
	lines int                     // in the log
	// written counts lines appended; synced is the count that the last
	// fsync covered. syncMu orders fsyncs.
	written, synced int64
	syncMu          sync.Mutex
}

var _ registry.Store = (*keptStore)(nil)

func openKeptStore(dir string, logger *slog.Logger) *keptStore {
	return &keptStore{dir: dir, logger: logger, live: map[string]api.Instance{}}
}

func keptKey(service, id string) string { return service + "/" + id }

type keptLine struct {
	Put    *api.Instance `json:"put,omitempty"`
	Delete string        `json:"delete,omitempty"`
}

// Load reads the snapshot and replays the log over it.
func (s *keptStore) Load() ([]api.Instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(filepath.Join(s.dir, instancesFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var ins []api.Instance
		if err := json.Unmarshal(b, &ins); err != nil {
			return nil, fmt.Errorf("%s: %w", instancesFile, err)
		}
		for _, in := range ins {
			s.live[keptKey(in.Service, in.ID)] = in
		}
	}
	f, err := os.OpenFile(filepath.Join(s.dir, instancesLog), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	skipped, end, err := s.replay(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", instancesLog, err)
	}
	if skipped > 0 {
		s.logger.Warn("skipped lines of the kept registrations' log that do not parse (a write cut short by a crash)", "file", instancesLog, "lines", skipped)
	}
	// Appends go after the last whole line: a torn tail is overwritten.
	if err := f.Truncate(end); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(end, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s.log = f
	out := make([]api.Instance, 0, len(s.live))
	for _, in := range s.live {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return keptKey(out[i].Service, out[i].ID) < keptKey(out[j].Service, out[j].ID) })
	return out, nil
}

// replay applies the log's lines, and returns how many did not parse and
// the offset after the last line that ends in a newline.
func (s *keptStore) replay(f *os.File) (skipped int, end int64, err error) {
	br := bufio.NewReader(f)
	for {
		line, rerr := br.ReadBytes('\n')
		if rerr == io.EOF {
			if len(bytes.TrimSpace(line)) > 0 {
				skipped++ // no newline: never acknowledged
			}
			return skipped, end, nil
		}
		if rerr != nil {
			return skipped, end, rerr
		}
		end += int64(len(line))
		s.lines++
		var l keptLine
		switch {
		case json.Unmarshal(line, &l) != nil:
			skipped++
		case l.Put != nil:
			s.live[keptKey(l.Put.Service, l.Put.ID)] = *l.Put
		case l.Delete != "":
			delete(s.live, l.Delete)
		default:
			skipped++
		}
	}
}

// Put keeps in.
func (s *keptStore) Put(in api.Instance) error {
	return s.append(keptLine{Put: &in}, func() { s.live[keptKey(in.Service, in.ID)] = in })
}

// Delete forgets service/id.
func (s *keptStore) Delete(service, id string) error {
	key := keptKey(service, id)
	return s.append(keptLine{Delete: key}, func() { delete(s.live, key) })
}

// append writes one line (apply changes live with it) and returns once it
// is on disk.
func (s *keptStore) append(l keptLine, apply func()) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	s.mu.Lock()
	if s.log == nil {
		s.mu.Unlock()
		return errors.New("the kept registrations were not loaded")
	}
	if _, err := s.log.Write(b); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("write %s: %w", instancesLog, err)
	}
	apply()
	s.lines++
	s.written++
	seq := s.written
	if s.lines > compactAt && s.lines > 2*len(s.live) {
		err := s.compact()
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()
	return s.sync(seq)
}

// sync returns once the log is synced up to line seq: one fsync covers
// every line written before it started (group commit).
func (s *keptStore) sync(seq int64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	if s.synced >= seq {
		s.mu.Unlock()
		return nil
	}
	f, upTo := s.log, s.written
	s.mu.Unlock()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", instancesLog, err)
	}
	s.mu.Lock()
	s.synced = max(s.synced, upTo)
	s.mu.Unlock()
	return nil
}

// compact writes every kept instance as the new snapshot, then empties the
// log. Called with mu held; what was written before is in the snapshot, so
// every line up to now counts as synced.
func (s *keptStore) compact() error {
	out := make([]api.Instance, 0, len(s.live))
	for _, in := range s.live {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return keptKey(out[i].Service, out[i].ID) < keptKey(out[j].Service, out[j].ID) })
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := secure.WriteSecretFile(filepath.Join(s.dir, instancesFile), b); err != nil {
		return fmt.Errorf("write %s: %w", instancesFile, err)
	}
	if err := s.log.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", instancesLog, err)
	}
	if _, err := s.log.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := s.log.Sync(); err != nil {
		return err
	}
	s.lines = 0
	s.synced = s.written
	return nil
}

// close closes the log.
func (s *keptStore) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return nil
	}
	err := s.log.Close()
	s.log = nil
	return err
}
