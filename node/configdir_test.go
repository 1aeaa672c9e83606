package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

func reloadOf(t *testing.T, hc *http.Client, base string) api.ReloadResponse {
	t.Helper()
	c, b := call(t, hc, http.MethodPost, base+"/v1/reload", "")
	var r api.ReloadResponse
	if c != 200 || json.Unmarshal([]byte(b), &r) != nil {
		t.Fatalf("POST /v1/reload: %d %s", c, b)
	}
	return r
}

func fileError(r api.ReloadResponse, file string) string {
	for _, f := range r.Files {
		if f.File == file {
			return f.Error
		}
	}
	return "(not listed)"
}

// Service definitions in --config-dir are registered at start, follow
// their files on reload (added, changed, removed), and a bad file is
// reported without touching the rest.
func TestConfigDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("web.json", `{"name": "web", "port": 9001, "tags": ["v1"], "checks": [{"type": "tcp", "interval": "10s", "status": "passing"}]}`)
	write("api.json", `{"name": "api", "id": "api-1", "address": "127.0.0.1", "port": 9002}`)
	write("bad.json", `{"name": "db", "port": 70000}`)
	write("notes.txt", `not a definition`)

	cfg := testConfig(t)
	cfg.ConfigDir = dir
	n := startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	hc := caClient(t, cfg.DataDir)
	waitReady(t, hc, base)
	waitFor(t, 10*time.Second, "web and api registered", func() error {
		if _, err := instanceOf(hc, base, "api", "api-1"); err != nil {
			return err
		}
		_, err := instanceOf(hc, base, "web", cfg.Name)
		return err
	})
	web, _ := instanceOf(hc, base, "web", cfg.Name)
	if web.Address != "127.0.0.1" || web.Port != 9001 || len(web.Checks) != 1 || web.Health != api.HealthPassing {
		t.Fatalf("web from its file: %+v", web)
	}

	r := reloadOf(t, hc, base)
	if len(r.Files) != 3 || !strings.Contains(fileError(r, "bad.json"), "port") || fileError(r, "web.json") != "" || r.Registered != 0 {
		t.Fatalf("reload with nothing changed: %+v", r)
	}
	// The API cannot change or remove them.
	if c, b := call(t, hc, http.MethodDelete, base+"/v1/services/web/instances/"+cfg.Name, ""); c != http.StatusForbidden || !strings.Contains(b, "web.json") {
		t.Fatalf("DELETE a defined instance: %d %s", c, b)
	}
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/api/instances/api-1", `{"address":"127.0.0.1","port":1}`); c != http.StatusForbidden {
		t.Fatalf("PUT over a defined instance: %d %s", c, b)
	}

	// Changed, removed, fixed; a duplicate and a broken file are
	// reported, and the broken file's instance stays as it was.
	write("web.json", `{"name": "web", "port": 9011, "tags": ["v2"], "checks": [{"type": "tcp", "interval": "10s", "status": "passing"}]}`)
	os.Remove(filepath.Join(dir, "api.json"))
	write("bad.json", `{"name": "db", "port": 5432}`)
	write("dup.json", `{"name": "web", "port": 9999}`)
	r = reloadOf(t, hc, base)
	if r.Registered != 2 || r.Deregistered != 1 || !strings.Contains(fileError(r, "dup.json"), "web.json") || fileError(r, "bad.json") != "" {
		t.Fatalf("reload after changes: %+v", r)
	}
	waitFor(t, 10*time.Second, "the changes in the catalog", func() error {
		if in, err := instanceOf(hc, base, "web", cfg.Name); err != nil || in.Port != 9011 || in.Tags[0] != "v2" || in.Health != api.HealthPassing {
			return fmt.Errorf("web: %+v %v", in, err)
		}
		if _, err := instanceOf(hc, base, "api", "api-1"); err == nil || !strings.HasPrefix(err.Error(), "404") {
			return fmt.Errorf("api-1 still there: %v", err)
		}
		_, err := instanceOf(hc, base, "db", cfg.Name)
		return err
	})

	write("web.json", `{"name": "web", "port": `)
	os.Remove(filepath.Join(dir, "dup.json"))
	r = reloadOf(t, hc, base)
	if !strings.Contains(fileError(r, "web.json"), "not a service definition") || r.Deregistered != 0 {
		t.Fatalf("reload with a broken file: %+v", r)
	}
	if in, err := instanceOf(hc, base, "web", cfg.Name); err != nil || in.Port != 9011 {
		t.Fatalf("a broken file dropped its instance: %+v %v", in, err)
	}

	// A FIFO is reported, not read (a read would block every reload).
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = reloadOf(t, hc, base)
	if !strings.Contains(fileError(r, "pipe.json"), "not a regular file") {
		t.Fatalf("a FIFO in the dir: %+v", r)
	}
	os.Remove(filepath.Join(dir, "pipe.json"))

	// SIGHUP's path: a new file appears without an API call.
	write("cache.json", `{"name": "cache", "port": 6379}`)
	if !n.RequestReload() {
		t.Fatal("RequestReload with a --config-dir")
	}
	waitFor(t, 10*time.Second, "cache registered on request", func() error {
		_, err := instanceOf(hc, base, "cache", cfg.Name)
		return err
	})

	// A node without a --config-dir says so.
	cfg2 := testConfig(t)
	cfg2.ConfigDir = filepath.Join(dir, "web.json")
	if _, err := New(cfg2); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("--config-dir naming a file: %v", err)
	}
}
