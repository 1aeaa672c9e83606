package node

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRequestToken(t *testing.T) {
	for _, c := range []struct {
		headers map[string][]string
		want    string
		err     string
	}{
		{nil, "", ""},
		{map[string][]string{"Authorization": {"Bearer abc"}}, "abc", ""},
		{map[string][]string{"Authorization": {"bearer  abc "}}, "abc", ""},
		{map[string][]string{"X-Herd-Token": {" abc"}}, "abc", ""},
		{map[string][]string{"Authorization": {"Bearer abc"}, "X-Herd-Token": {"abc"}}, "abc", ""},
		{map[string][]string{"Authorization": {"Bearer abc"}, "X-Herd-Token": {"xyz"}}, "", "different tokens"},
		{map[string][]string{"Authorization": {"Basic YTpi"}}, "", "only the Bearer scheme"},
		{map[string][]string{"Authorization": {"Bearer"}}, "", "carries no token"},
		{map[string][]string{"Authorization": {"Bearer a", "Bearer b"}}, "", "more than one"},
		{map[string][]string{"X-Herd-Token": {"a", "b"}}, "", "more than one"},
	} {
		r := &http.Request{Header: http.Header{}}
		for k, vs := range c.headers {
			for _, v := range vs {
				r.Header.Add(k, v)
			}
		}
		got, err := requestToken(r)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: got %q, %v; want an error with %q", c.headers, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%v: got %q, %v; want %q", c.headers, got, err, c.want)
		}
	}
}

// Denials are logged at most logBurst a second; the next line logged
// carries the count of those that were not.
func TestDenialLogRateLimit(t *testing.T) {
	var a aclState
	now := time.Unix(1000, 0)
	for i := range logBurst {
		if s, ok := a.mayLog(now); !ok || s != 0 {
			t.Fatalf("line %d: %d %v", i, s, ok)
		}
	}
	for range 5 {
		if _, ok := a.mayLog(now); ok {
			t.Fatal("logged past the burst")
		}
	}
	if s, ok := a.mayLog(now.Add(time.Second)); !ok || s != 5 {
		t.Fatalf("next second: %d %v, want 5 suppressed", s, ok)
	}
}

// An expired token is listed as expired for a while, then removed from the
// registry by the nodes.
func TestExpiredTokensAreReaped(t *testing.T) {
	cfg := testConfig(t)
	cfg.aclReapAfter, cfg.aclReapEvery = 300*time.Millisecond, 50*time.Millisecond
	startNode(t, cfg)
	base := fmt.Sprintf("https://127.0.0.1:%d", cfg.APIPort)
	hc := caClient(t, cfg.DataDir)
	defer hc.CloseIdleConnections()
	waitFor(t, 20*time.Second, "a 1s token", func() error {
		resp, err := hc.Post(base+"/v1/acl/tokens", "application/json", strings.NewReader(`{"name":"brief","policies":["read"],"ttl":"1s"}`))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})
	list := func() string {
		_, body, err := getWith(hc, base+"/v1/acl/tokens")
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	waitFor(t, 5*time.Second, "the token listed as expired", func() error {
		if b := list(); !strings.Contains(b, `"expired": true`) {
			return fmt.Errorf("%s", b)
		}
		return nil
	})
	waitFor(t, 10*time.Second, "the expired token removed", func() error {
		if b := list(); strings.Contains(b, `"brief"`) || !strings.Contains(b, `"bootstrap"`) {
			return fmt.Errorf("%s", b)
		}
		return nil
	})
}
