package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// writeLegacyKept writes the two files an older herd kept its
// registrations in: a snapshot, and a log of changes since with a torn
// last line (a write a crash cut short, never acknowledged).
func writeLegacyKept(t *testing.T, dir string) {
	t.Helper()
	snap := []api.Instance{
		{Service: "web", ID: "a", Node: "solo", Address: "127.0.0.1", Port: 81},
		{Service: "web", ID: "b", Node: "solo", Address: "127.0.0.1", Port: 82},
	}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyInstancesFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	log := `{"put":{"service":"web","id":"a","node":"solo","address":"127.0.0.1","port":91}}
{"delete":"web/b"}
{"put":{"service":"api","id":"c","node":"solo","address":"127.0.0.1","port":93}}
{"put":{"service":"web","id":"torn"`
	if err := os.WriteFile(filepath.Join(dir, legacyInstancesLog), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadLegacyKept(t *testing.T) {
	dir := t.TempDir()
	if ins, skipped, err := loadLegacyKept(dir); err != nil || len(ins) != 0 || skipped != 0 {
		t.Fatalf("no files: %v %d %v", ins, skipped, err)
	}
	writeLegacyKept(t, dir)
	ins, skipped, err := loadLegacyKept(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range ins {
		got = append(got, fmt.Sprintf("%s/%s:%d", in.Service, in.ID, in.Port))
	}
	if strings.Join(got, ",") != "api/c:93,web/a:91" || skipped != 1 {
		t.Fatalf("loaded %v (skipped %d), want api/c:93,web/a:91 and the torn line skipped", got, skipped)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyInstancesFile), []byte("[{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadLegacyKept(dir); err == nil || !strings.Contains(err.Error(), legacyInstancesFile) {
		t.Fatalf("a snapshot that does not parse: %v, want an error naming it", err)
	}
}

// A node upgraded from a herd that kept its registrations in the data dir
// moves them into the registry, registers them, and removes the files.
func TestLegacyKeptMovedIntoRegistry(t *testing.T) {
	cfg := testConfig(t)
	writeLegacyKept(t, cfg.DataDir)
	n := startNode(t, cfg)
	hc := caClient(t, cfg.DataDir)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	waitFor(t, 30*time.Second, "the old registrations in the catalog", func() error {
		for svc, port := range map[string]int{"web": 91, "api": 93} {
			var sr api.ServiceResponse
			code, body, err := getWith(hc, base+"/v1/services/"+svc)
			if err != nil || code != 200 {
				return fmt.Errorf("%s: %d %s %v", svc, code, body, err)
			}
			if err := json.Unmarshal([]byte(body), &sr); err != nil {
				return err
			}
			if len(sr.Instances) != 1 || sr.Instances[0].Port != port {
				return fmt.Errorf("%s: %+v", svc, sr.Instances)
			}
		}
		return nil
	})
	waitFor(t, 10*time.Second, "the old files removed", func() error {
		for _, f := range []string{legacyInstancesFile, legacyInstancesLog} {
			if _, err := os.Stat(filepath.Join(cfg.DataDir, f)); !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: %v", f, err)
			}
		}
		return nil
	})
	kept := 0
	for _, in := range n.registrar.Instances() {
		if in.Service == "web" || in.Service == "api" {
			kept++
		}
	}
	if kept != 2 {
		t.Fatalf("the registrar holds %d of the old registrations, want 2", kept)
	}
	// Kept now in the registry: a restart registers them again.
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	waitFor(t, 30*time.Second, "the old registrations back after a restart", func() error {
		for _, svc := range []string{"web", "api"} {
			if !n.catalog.Has(svc, map[string]string{"web": "a", "api": "c"}[svc]) {
				return fmt.Errorf("%s not in the catalog", svc)
			}
		}
		return nil
	})
}
