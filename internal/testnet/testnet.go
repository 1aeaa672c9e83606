// Package testnet gives tests network addresses that behave as they need,
// and keep doing so while the test runs.
package testnet

import (
	"net"
	"syscall"
	"testing"
)

// Refusing returns a loopback TCP address whose connections are refused
// until the test ends.
//
// A port taken from a listener that is then closed is not that: any
// process may listen on it next (another package's test, run at the same
// moment), and a test that expected "connection refused" then talks to a
// stranger. Here the port stays bound, by a socket that never listens: the
// kernel answers every connection to it with a reset, and no one else can
// bind it (the socket does not set SO_REUSEADDR).
func Refusing(t testing.TB) *net.TCPAddr {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("testnet: socket: %v", err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("testnet: bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("testnet: getsockname: %v", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		t.Fatalf("testnet: bound to %T, not an IPv4 address", sa)
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: in4.Port}
}
