package acl

import (
	"strings"
	"testing"
	"time"
)

func TestValidatePolicy(t *testing.T) {
	for _, ok := range []string{"read", "operator", "service:web", "service:web-", "service:a"} {
		if err := ValidatePolicy(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for p, want := range map[string]string{
		"":                                   "unknown policy",
		"admin":                              "unknown policy",
		"service:":                           "names no service prefix",
		"service:Web":                        "at most 63",
		"service:web/*":                      "at most 63",
		"Read":                               "unknown policy",
		"service:" + strings.Repeat("a", 64): "at most 63",
	} {
		err := ValidatePolicy(p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", p, err, want)
		}
	}
	if err := ValidatePolicies(nil); err == nil {
		t.Error("no policy accepted")
	}
	if err := ValidatePolicies(make([]string, MaxPolicies+1)); err == nil {
		t.Error("too many policies accepted")
	}
}

func TestAllows(t *testing.T) {
	cases := []struct {
		policies []string
		need     Need
		want     bool
	}{
		{[]string{"read"}, NeedRead, true},
		{[]string{"read"}, NeedService("web"), false},
		{[]string{"read"}, NeedOperator, false},
		{[]string{"service:web"}, NeedRead, true},
		{[]string{"service:web"}, NeedService("web"), true},
		{[]string{"service:web"}, NeedService("web-api"), true},
		{[]string{"service:web"}, NeedService("hello"), false},
		{[]string{"service:web"}, NeedService("we"), false},
		{[]string{"service:web"}, NeedOperator, false},
		{[]string{"service:web", "service:hello"}, NeedService("hello"), true},
		{[]string{"operator"}, NeedService("anything"), true},
		{[]string{"operator"}, NeedOperator, true},
		{nil, NeedRead, false},
		{nil, NeedAuthenticated, true},
		{[]string{"service:"}, NeedService("web"), false},
	}
	for _, c := range cases {
		if got := Allows(c.policies, c.need); got != c.want {
			t.Errorf("Allows(%v, %s) = %v, want %v", c.policies, c.need, got, c.want)
		}
	}
}

func TestSecrets(t *testing.T) {
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := CheckSecret(" " + s + "\n"); err != nil || got != s {
		t.Fatalf("CheckSecret(own secret) = %q, %v", got, err)
	}
	s2, _ := NewSecret()
	if s == s2 || Hash(s) == Hash(s2) {
		t.Fatal("two secrets or hashes are equal")
	}
	for _, bad := range []string{"", "herd-acl1.", "herd-acl1." + strings.Repeat("g", 64), "herd-acl1." + strings.Repeat("a", 63), "Bearer x", s + "0"} {
		if _, err := CheckSecret(bad); err == nil {
			t.Errorf("CheckSecret(%q) accepted", bad)
		} else if len(bad) > 12 && strings.Contains(err.Error(), bad) {
			t.Errorf("the error quotes the input: %v", err)
		}
	}
	if _, err := CheckSecret("herd1." + strings.Repeat("a", 64)); err != ErrJoinToken {
		t.Errorf("a join token: got %v, want ErrJoinToken", err)
	}
	tok := &Token{Name: "a", Policies: []string{"read"}, Hash: Hash(s), ExpiresAt: time.Now().Add(time.Hour)}
	set := NewSet([]*Token{tok}, 7)
	if set.Lookup(s) != tok || set.Lookup(s2) != nil || set.Len() != 1 || set.Revision() != 7 {
		t.Fatal("set lookup")
	}
	var none *Set
	if none.Lookup(s) != nil || none.Len() != 0 {
		t.Fatal("nil set")
	}
	if tok.Expired(time.Now()) || !tok.Expired(tok.ExpiresAt) || (&Token{}).Expired(time.Now()) {
		t.Fatal("expiry")
	}
}
