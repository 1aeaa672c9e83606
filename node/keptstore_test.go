package node

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/herdcluster/herd/api"
)

func keptInstance(service, id string, port int) api.Instance {
	return api.Instance{Service: service, ID: id, Node: "n1", Address: "127.0.0.1", Port: port}
}

func loadKept(t *testing.T, dir string) (*keptStore, map[string]int) {
	t.Helper()
	s := openKeptStore(dir, slog.New(slog.DiscardHandler))
	ins, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.close() })
	got := map[string]int{}
	for _, in := range ins {
		got[in.Service+"/"+in.ID] = in.Port
	}
	return s, got
}

// Puts and deletes survive a reopen; a torn last line (a write a crash cut
// short, never acknowledged) is dropped and overwritten by the next append.
func TestKeptStoreReplays(t *testing.T) {
	dir := t.TempDir()
	s, got := loadKept(t, dir)
	if len(got) != 0 {
		t.Fatalf("empty dir: %v", got)
	}
	for i, id := range []string{"a", "b", "c"} {
		if err := s.Put(keptInstance("web", id, 80+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(keptInstance("web", "a", 90)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("web", "b"); err != nil {
		t.Fatal(err)
	}
	s.close()
	f, err := os.OpenFile(filepath.Join(dir, instancesLog), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"put":{"service":"web","id":"torn"`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s, got = loadKept(t, dir)
	if fmt.Sprint(got) != "map[web/a:90 web/c:82]" {
		t.Fatalf("after reopen: %v", got)
	}
	if err := s.Put(keptInstance("web", "d", 84)); err != nil {
		t.Fatal(err)
	}
	s.close()
	if _, got = loadKept(t, dir); fmt.Sprint(got) != "map[web/a:90 web/c:82 web/d:84]" {
		t.Fatalf("after an append over the torn tail: %v", got)
	}
}

// A snapshot made before the log existed (herd's old format) is read; the
// log compacts into a new snapshot; an old log replayed over a newer
// snapshot (a crash between writing the snapshot and emptying the log)
// changes nothing.
func TestKeptStoreCompacts(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, instancesFile), []byte(`[{"id":"old","service":"api","node":"n1","address":"127.0.0.1","port":7}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, got := loadKept(t, dir)
	if fmt.Sprint(got) != "map[api/old:7]" {
		t.Fatalf("old snapshot: %v", got)
	}
	var oldLog []byte
	for i := range compactAt + 10 {
		id := fmt.Sprintf("i%d", i%50)
		if i == compactAt {
			// The log as a crash after the snapshot's rename would leave
			// it: every line, the one that made it compact the last.
			oldLog, _ = os.ReadFile(filepath.Join(dir, instancesLog))
			in := keptInstance("web", id, 1000+i)
			line, _ := json.Marshal(keptLine{Put: &in})
			oldLog = append(append(oldLog, line...), '\n')
		}
		if err := s.Put(keptInstance("web", id, 1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete("api", "old"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, instancesLog))
	if err != nil || st.Size() > 100<<10 {
		t.Fatalf("the log did not compact: %v %v", st.Size(), err)
	}
	s.close()
	_, want := loadKept(t, dir)
	last9 := 0
	for i := range compactAt + 10 {
		if i%50 == 9 {
			last9 = 1000 + i
		}
	}
	if len(want) != 50 || want["api/old"] != 0 || want["web/i9"] != last9 {
		t.Fatalf("after compaction: %d instances, %v", len(want), want["web/i9"])
	}
	// The crash: the old log back in place beside the new snapshot, plus
	// the lines written after it.
	cur, _ := os.ReadFile(filepath.Join(dir, instancesLog))
	if err := os.WriteFile(filepath.Join(dir, instancesLog), append(oldLog, cur...), 0o600); err != nil {
		t.Fatal(err)
	}
	_, again := loadKept(t, dir)
	if fmt.Sprint(again) != fmt.Sprint(want) {
		t.Fatal("an old log replayed over the new snapshot changed what is kept")
	}
}

// Concurrent changes, each durable when it returns, all kept.
func TestKeptStoreConcurrent(t *testing.T) {
	dir := t.TempDir()
	s, _ := loadKept(t, dir)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 50 {
				if err := s.Put(keptInstance(fmt.Sprintf("s%d", w), fmt.Sprintf("i%d", i), 1)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	s.close()
	if _, got := loadKept(t, dir); len(got) != 16*50 {
		t.Fatalf("%d kept, want %d", len(got), 16*50)
	}
}

// A change costs the same with 10 or 10,000 kept (16 writers: one fsync
// serves many).
func BenchmarkKeptStorePut(b *testing.B) {
	for _, held := range []int{10, 10000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			s := openKeptStore(b.TempDir(), slog.New(slog.DiscardHandler))
			if _, err := s.Load(); err != nil {
				b.Fatal(err)
			}
			defer s.close()
			for i := range held {
				s.live[fmt.Sprintf("web/h%d", i)] = keptInstance("web", fmt.Sprintf("h%d", i), 1)
			}
			b.SetParallelism(8)
			var n sync.Mutex
			seq := 0
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n.Lock()
					seq++
					id := fmt.Sprintf("b%d", seq%held)
					n.Unlock()
					if err := s.Put(keptInstance("web", id, 2)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
