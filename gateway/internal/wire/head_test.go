package wire

import (
	"bufio"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
)

func TestHeadLen(t *testing.T) {
	for _, c := range []struct {
		in   string
		full bool
		n    int
		more bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, 27, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET", false, 27, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n", false, 0, true},
		{"GET / HTTP/1.1\r\nHost: a\r\n", true, 0, false},
		{"GET / HTTP/1.1\nHost: a\n\n", false, 0, false},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", false, 0, true}, // no end yet, and no LF LF
		{"\n\r\n", false, 0, true},
		{"\r\n\n", false, 0, false},
	} {
		n, more := HeadLen([]byte(c.in), c.full)
		if n != c.n || more != c.more {
			t.Errorf("HeadLen(%q, %v) = %d, %v; want %d, %v", c.in, c.full, n, more, c.n, c.more)
		}
	}
}

func TestCutLine(t *testing.T) {
	for _, c := range []struct {
		in, line, rest string
		ok             bool
	}{
		{"a\r\nb", "a", "b", true},
		{"\r\n", "", "", true},
		{"a\rb\r\n", "", "", false}, // bare CR
		{"a\nb\r\n", "", "", false}, // bare LF
		{"abc", "", "", false},
		{"abc\r", "", "", false},
	} {
		line, rest, ok := CutLine(c.in)
		bl, br, bok := CutLine([]byte(c.in))
		if line != c.line || rest != c.rest || ok != c.ok {
			t.Errorf("CutLine(%q) = %q, %q, %v", c.in, line, rest, ok)
		}
		if string(bl) != line || string(br) != rest || bok != ok {
			t.Errorf("CutLine([]byte(%q)) differs from the string form", c.in)
		}
	}
}

// SplitField accepts only fields net/http reads the same way, and reads
// them as it does; the byte and string forms agree.
func FuzzSplitField(f *testing.F) {
	for _, s := range []string{"Host: a", "X-A:  b \t", "Bad Name: x", ": x", "A: b\x00", "A:", "A : b", "a\tb: c", "K: v\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, field string) {
		k, v, ok := SplitField(field)
		bk, bv, bok := SplitField([]byte(field))
		if string(bk) != k || string(bv) != v || bok != ok {
			t.Fatalf("byte form %q %q %v, string form %q %q %v", bk, bv, bok, k, v, ok)
		}
		if !ok || strings.ContainsAny(field, "\r\n") {
			return
		}
		r := textproto.NewReader(bufio.NewReader(strings.NewReader(field + "\r\n\r\n")))
		h, err := r.ReadMIMEHeader()
		if err != nil {
			t.Fatalf("SplitField took %q, net/textproto refuses it: %v", field, err)
		}
		got := h[http.CanonicalHeaderKey(k)]
		if len(got) != 1 || got[0] != v {
			t.Fatalf("SplitField(%q) = %q, %q; net/textproto reads %v", field, k, v, h)
		}
	})
}
