package testnet_test

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/herdcluster/herd/internal/testnet"
)

// The address refuses connections, and no listener can take its port
// while the test runs.
func TestRefusing(t *testing.T) {
	addr := testnet.Refusing(t)
	for range 3 {
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			c.Close()
			t.Fatalf("a connection to %s was accepted", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial %s: %v, want connection refused", addr, err)
		}
	}
	ln, err := net.Listen("tcp", addr.String())
	if err == nil {
		ln.Close()
		t.Fatalf("a listener took %s", addr)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen %s: %v, want address in use", addr, err)
	}
}
