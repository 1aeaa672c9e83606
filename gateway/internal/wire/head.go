package wire

import "bytes"

// The head rules: how a request or answer head is found in a buffer, cut
// into lines and split into fields. The front reads request heads with
// them (as strings: its header values are substrings of one), the express
// path answer heads (as bytes, straight from the upstream's buffer), and
// copies trailer fields; both accept the same heads, and leave whatever
// they do not accept to net/http, whose readers are lenient where these
// are strict.

// Text is what a head is read as: a string or a byte slice.
type Text interface{ ~string | ~[]byte }

// HeadLen looks for the end of a head (CRLF CRLF) at the start of buf. n
// is the head's length, with its final CRLF CRLF; when n is 0, more says
// whether the head may still come in: not when its lines end in a bare LF
// or when buf is full (a head larger than the reader takes), which are
// net/http's to read.
func HeadLen(buf []byte, full bool) (n int, more bool) {
	for i := 0; i < len(buf); i++ {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			break
		}
		i += j
		switch {
		case i >= 3 && buf[i-1] == '\r' && buf[i-2] == '\n' && buf[i-3] == '\r':
			return i + 1, false
		case i >= 1 && buf[i-1] == '\n':
			return 0, false // LF LF: bare-LF line ends
		}
	}
	return 0, !full
}

// CutLine cuts the first CRLF-terminated line off b: ok is false when b
// holds no whole line, or when a CR or LF stands alone before it (bare
// CR and bare LF are never taken for line ends, nor passed on inside one).
func CutLine[T Text](b T) (line, rest T, ok bool) {
	for i := 0; i+1 < len(b); i++ {
		switch b[i] {
		case '\r':
			if b[i+1] != '\n' {
				return line, rest, false
			}
			return b[:i], b[i+2:], true
		case '\n':
			return line, rest, false
		}
	}
	return line, rest, false
}

// SplitField splits "Name: value" into the name and the value without the
// blanks around it. ok is false for anything net/http should judge: an
// empty or invalid name, a space before the colon, obs-fold, control
// characters in the value.
func SplitField[T Text](f T) (k, v T, ok bool) {
	i := 0
	for i < len(f) && f[i] != ':' {
		if !TokenByte[f[i]] {
			return k, v, false
		}
		i++
	}
	if i == 0 || i == len(f) {
		return k, v, false
	}
	k, v = f[:i], f[i+1:]
	for j := 0; j < len(v); j++ {
		if c := v[j]; (c < 0x20 && c != '\t') || c == 0x7f {
			return k, v, false
		}
	}
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return k, v, true
}

// ValidFieldName reports whether k is a field name: a non-empty token.
func ValidFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !TokenByte[k[i]] {
			return false
		}
	}
	return true
}

// TokenByte: the characters of a token, such as a field name (RFC 9110).
var TokenByte = AlnumAnd("!#$%&'*+-.^_`|~")

// AlnumAnd is a byte set of the ASCII letters and digits and extra.
func AlnumAnd(extra string) (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
	}
	for i := 0; i < len(extra); i++ {
		t[extra[i]] = true
	}
	return t
}
