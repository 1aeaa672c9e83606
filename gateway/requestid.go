package gateway

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
)

// maxRequestIDLen is the longest client-sent X-Request-Id the gateway keeps.
const maxRequestIDLen = 128

// inboundRequestID returns the client's X-Request-Id and whether the gateway
// keeps it: exactly one value of 1-128 visible ASCII characters (0x21-0x7e).
func inboundRequestID(h http.Header) (string, bool) {
	v := h["X-Request-Id"]
	if len(v) != 1 || !validRequestID(v[0]) {
		return "", false
	}
	return v[0], true
}

func validRequestID(s string) bool {
	if s == "" || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// newRequestID returns 16 random bytes in hex. Request IDs must be unique,
// not secret, so they come from the runtime's per-thread ChaCha8 generator
// (seeded from the OS) instead of a crypto/rand call per request.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	var out [32]byte
	hex.Encode(out[:], b[:])
	return string(out[:])
}
