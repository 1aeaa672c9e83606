package node

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// blockingGet GETs a service with index and wait and returns the status,
// the X-Herd-Index and how long the answer took.
func blockingGet(t *testing.T, hc *http.Client, url string) (int, int64, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	i, _ := strconv.ParseInt(resp.Header.Get(IndexHeader), 10, 64)
	return resp.StatusCode, i, time.Since(start)
}

// A blocking query returns at the service's next change, or after its
// wait with the same index; bad parameters are 400s naming them.
func TestBlockingQuery(t *testing.T) {
	cfg := testConfig(t)
	startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	hc := caClient(t, cfg.DataDir)
	waitReady(t, hc, base)
	register := func(id string, port int) {
		t.Helper()
		if c, b := call(t, hc, http.MethodPut, base+"/v1/services/web/instances/"+id, fmt.Sprintf(`{"address":"127.0.0.1","port":%d}`, port)); c != 200 {
			t.Fatalf("register: %d %s", c, b)
		}
	}
	register("web-1", 9001)
	var index int64
	waitFor(t, 10*time.Second, "web in the catalog", func() error {
		code, i, _ := blockingGet(t, hc, base+"/v1/services/web")
		if code != 200 || i == 0 {
			return fmt.Errorf("%d, index %d", code, i)
		}
		index = i
		return nil
	})

	// No change: back after the wait (and its jitter), same index.
	code, i, took := blockingGet(t, hc, fmt.Sprintf("%s/v1/services/web?index=%d&wait=300ms", base, index))
	if code != 200 || i != index || took < 300*time.Millisecond {
		t.Fatalf("an idle wait: %d, index %d (was %d), after %s", code, i, index, took)
	}
	// A change to another service does not end it; one to web does.
	type answer struct {
		code  int
		index int64
		took  time.Duration
	}
	done := make(chan answer, 1)
	go func() {
		code, i, took := blockingGet(t, hc, fmt.Sprintf("%s/v1/services/web?index=%d&wait=30s", base, index))
		done <- answer{code, i, took}
	}()
	if c, b := call(t, hc, http.MethodPut, base+"/v1/services/db/instances/db-1", `{"address":"127.0.0.1","port":5432}`); c != 200 {
		t.Fatalf("register db: %d %s", c, b)
	}
	register("web-2", 9002)
	changed := time.Now()
	select {
	case a := <-done:
		if a.code != 200 || a.index <= index {
			t.Fatalf("woken by web's change: %d, index %d (was %d)", a.code, a.index, index)
		}
		t.Logf("woken %s after the registration was acknowledged", time.Since(changed))
	case <-time.After(10 * time.Second):
		t.Fatal("web's change did not end the blocking query")
	}
	// index=0 answers at once.
	if code, i, took := blockingGet(t, hc, base+"/v1/services/web?index=0&wait=30s"); code != 200 || i <= index || took > 5*time.Second {
		t.Fatalf("index=0: %d, index %d, after %s", code, i, took)
	}

	for _, bad := range []struct{ query, field string }{
		{"index=-1", "index"},
		{"index=x", "index"},
		{"index=1&wait=forever", "wait"},
		{"index=1&wait=11m", "wait"},
		{"index=1&wait=0s", "wait"},
		{"index=1&consistent", "consistent"},
	} {
		c, b, err := getWith(hc, base+"/v1/services/web?"+bad.query)
		if err != nil || c != http.StatusBadRequest || !strings.Contains(b, `"field": "`+bad.field+`"`) {
			t.Errorf("?%s: %d %s %v, want a 400 naming %s", bad.query, c, b, err, bad.field)
		}
	}
}

// --enable-debug serves the runtime profiles to operators only; without
// it there is no such endpoint.
func TestDebugEndpoints(t *testing.T) {
	cfg := testConfig(t)
	cfg.EnableDebug = true
	startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	hc := caClient(t, cfg.DataDir)
	waitReady(t, hc, base)
	if c, b, err := getWith(hc, base+"/debug/pprof/goroutine?debug=1"); err != nil || c != 200 || !strings.Contains(b, "goroutine profile") {
		t.Fatalf("with the management token: %d %.200s %v", c, b, err)
	}
	anon := &http.Client{Transport: hc.Transport.(tokenTransport).base}
	if c, _, err := getWith(anon, base+"/debug/pprof/goroutine?debug=1"); err != nil || c != http.StatusUnauthorized {
		t.Fatalf("without a token: %d %v", c, err)
	}

	cfg2 := testConfig(t)
	startNode(t, cfg2)
	base2 := fmt.Sprintf("https://127.0.0.1:%d", cfg2.APIPort)
	hc2 := caClient(t, cfg2.DataDir)
	waitReady(t, hc2, base2)
	if c, _, err := getWith(hc2, base2+"/debug/pprof/goroutine?debug=1"); err != nil || c != http.StatusNotFound {
		t.Fatalf("without --enable-debug: %d %v", c, err)
	}
}
