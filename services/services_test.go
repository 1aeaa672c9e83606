package services

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdcluster/herd/api"
)

// recordingRegistrar fails the first failures calls, then records.
type recordingRegistrar struct {
	mu       sync.Mutex
	failures int
	got      []api.Instance
}

func (r *recordingRegistrar) Register(ctx context.Context, in api.Instance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failures > 0 {
		r.failures--
		return errors.New("registry unavailable")
	}
	r.got = append(r.got, in)
	return nil
}

func (r *recordingRegistrar) Deregister(ctx context.Context, service, id string) error { return nil }

func startHost(t *testing.T, reg Registrar, svcs ...string) (*Host, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(Config{Node: "n1", AdvertiseIP: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port, Services: svcs}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Serve(ln) }()
	t.Cleanup(func() {
		if err := h.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return h, "http://" + ln.Addr().String()
}

func TestHelloAndEcho(t *testing.T) {
	_, base := startHost(t, &recordingRegistrar{}, "hello", "echo")
	for _, path := range []string{"/hello", "/hello/"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		var hr HelloResponse
		err = json.NewDecoder(resp.Body).Decode(&hr)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || hr != (HelloResponse{Message: "Hello, World!", Node: "n1"}) {
			t.Fatalf("GET %s = %d %+v %v", path, resp.StatusCode, hr, err)
		}
	}
	for path, code := range map[string]int{"/hello/x": 404, "/nope": 404} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, code)
		}
	}
	resp, err := http.Post(base+"/hello/", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /hello/ = %d", resp.StatusCode)
	}

	req, _ := http.NewRequest(http.MethodPatch, base+"/echo/a%2Fb/c?x=1&x=2", strings.NewReader("payload"))
	req.Header.Set("X-Test", "yes")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var er EchoResponse
	err = json.NewDecoder(resp.Body).Decode(&er)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if er.Method != "PATCH" || er.Path != "/echo/a%2Fb/c" || er.Body != "payload" || er.Node != "n1" ||
		len(er.Query["x"]) != 2 || er.Headers["X-Test"][0] != "yes" {
		t.Fatalf("echo = %+v", er)
	}

	big := strings.NewReader(strings.Repeat("x", maxEchoBody+1))
	resp, err = http.Post(base+"/echo/", "text/plain", big)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized echo = %d", resp.StatusCode)
	}
}

func TestRegisterAllRetriesUntilIn(t *testing.T) {
	reg := &recordingRegistrar{failures: 3}
	h, _ := startHost(t, reg, "hello", "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.RegisterAll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(reg.got) != 2 {
		t.Fatalf("registered %+v", reg.got)
	}
	for _, in := range reg.got {
		if in.ID != "n1" || in.Node != "n1" || in.Path != "/"+in.Service || in.Address != "127.0.0.1" {
			t.Fatalf("instance %+v", in)
		}
		if err := in.Validate(); err != nil {
			t.Fatalf("instance %+v invalid: %v", in, err)
		}
	}
}

func TestHostConfigRejectsUnknownService(t *testing.T) {
	if _, err := NewHost(Config{Node: "n1", AdvertiseIP: "127.0.0.1", Port: 1, Services: []string{"nope"}}, &recordingRegistrar{}, nil); err == nil {
		t.Fatal("unknown service accepted")
	}
}
