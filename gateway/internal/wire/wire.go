// Package wire holds the gateway's HTTP/1.1 rules, each written once:
// which fields are hop-by-hop, which forwarding fields a client may not
// set, how a comma-separated token list (Connection, TE) is matched
// (wire.go); how a head is found, cut into lines and split into fields
// (head.go); how a body in its own framing is copied (body.go). Every path
// through the gateway (the front's request heads, the express path's
// answers, the upstream client's requests) uses these, so a rule changes
// in one place.
//
// Matching is ASCII-only and case-insensitive, as RFC 9110 defines tokens:
// a Unicode fold (strings.EqualFold) would take "\u212Aeep-Alive" (a Kelvin
// sign) for Keep-Alive where net/http and the upstream do not, and one
// path would then strip what another forwards. It imports only the
// standard library.
package wire

import "net/http"

// HopByHop are the hop-by-hop fields, canonical (RFC 9110 7.6.1, and the
// legacy Proxy-Connection and Keep-Alive): never forwarded, in either
// direction, nor any field a Connection field names.
var HopByHop = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// IsHopByHop reports whether k, canonical, is a hop-by-hop field.
func IsHopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// IsHopByHopFold reports whether k, in any case, is a hop-by-hop field
// (for heads read raw, whose names are not canonicalised).
func IsHopByHopFold(k string) bool {
	for _, h := range HopByHop {
		if EqualFold(k, h) {
			return true
		}
	}
	return false
}

// IsFraming reports whether k, in any case, frames the message body
// (Transfer-Encoding, Trailer): a path that copies a body in its own
// framing keeps them, one that lets net/http frame it drops them.
func IsFraming(k string) bool {
	return EqualFold(k, "Transfer-Encoding") || EqualFold(k, "Trailer")
}

// IsForwarding reports whether k, canonical, is a forwarding field the
// gateway sets itself: a client's own are dropped.
func IsForwarding(k string) bool {
	switch k {
	case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return false
}

// HasToken reports whether the comma-separated list v holds token (ASCII
// case-insensitive, optional white space around each element).
func HasToken(v, token string) bool {
	for v != "" {
		var t string
		t, v = cut(v)
		if EqualFold(trimOWS(t), token) {
			return true
		}
	}
	return false
}

// AnyHasToken reports whether any of the field values holds token: for a
// field sent more than once, such as Connection.
func AnyHasToken(values []string, token string) bool {
	for _, v := range values {
		if HasToken(v, token) {
			return true
		}
	}
	return false
}

// RemoveHopByHop deletes from h the hop-by-hop fields and every field its
// Connection field names.
func RemoveHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var t string
			t, v = cut(v)
			if t = trimOWS(t); t != "" {
				h.Del(t)
			}
		}
	}
	for _, k := range HopByHop {
		delete(h, k)
	}
}

// EqualFold reports whether a and b are equal ignoring ASCII case.
func EqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// cut splits v at its first comma.
func cut(v string) (elem, rest string) {
	for i := 0; i < len(v); i++ {
		if v[i] == ',' {
			return v[:i], v[i+1:]
		}
	}
	return v, ""
}

// trimOWS trims spaces and tabs (RFC 9110's OWS) around s.
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
