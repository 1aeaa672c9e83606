package api

import (
	"regexp"
	"strings"
	"testing"
)

// dnsLabel is the definition ValidName implements by hand.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func TestValidName(t *testing.T) {
	for _, s := range []string{"", "a", "-", "a-", "-a", "a-b", "A", "web1", "1web", "a_b", "a.b", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a\n", "hello world"} {
		if got, want := ValidName(s), dnsLabel.MatchString(s); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "a-b", "-a", strings.Repeat("z", 63)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidName(s), dnsLabel.MatchString(s); got != want {
			t.Fatalf("ValidName(%q) = %v, want %v", s, got, want)
		}
	})
}
