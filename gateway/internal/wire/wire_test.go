package wire

import (
	"net/http"
	"testing"
)

func TestHasToken(t *testing.T) {
	for _, c := range []struct {
		v, tok string
		want   bool
	}{
		{"close", "close", true},
		{"Keep-Alive, Upgrade", "upgrade", true},
		{" keep-alive ,\tTE ", "te", true},
		{"x-a,,x-b", "x-b", true},
		{"closed", "close", false},
		{"", "close", false},
		{"\u212Aeep-Alive", "keep-alive", false}, // a Kelvin sign is not a K
		{"clo se", "close", false},
	} {
		if got := HasToken(c.v, c.tok); got != c.want {
			t.Errorf("HasToken(%q, %q) = %v, want %v", c.v, c.tok, got, c.want)
		}
	}
	if !AnyHasToken([]string{"x", "y, trailers"}, "Trailers") || AnyHasToken(nil, "x") {
		t.Error("AnyHasToken")
	}
}

func TestHopByHop(t *testing.T) {
	for _, k := range HopByHop {
		if !IsHopByHop(k) || !IsHopByHopFold(k) {
			t.Errorf("%s is hop-by-hop", k)
		}
		if http.CanonicalHeaderKey(k) != k {
			t.Errorf("%s is not canonical", k)
		}
	}
	if !IsHopByHopFold("transfer-ENCODING") || IsHopByHop("transfer-encoding") || IsHopByHop("X-Custom") {
		t.Error("IsHopByHop folds only in IsHopByHopFold")
	}
	if !IsFraming("trailer") || IsFraming("Te") {
		t.Error("IsFraming")
	}
	h := http.Header{"Connection": {"X-Secret, keep-alive", "x-other"}, "X-Secret": {"1"}, "X-Other": {"2"},
		"Keep-Alive": {"timeout=5"}, "Te": {"trailers"}, "X-Kept": {"3"}, "Transfer-Encoding": {"chunked"}}
	RemoveHopByHop(h)
	if len(h) != 1 || h.Get("X-Kept") != "3" {
		t.Errorf("after RemoveHopByHop: %v", h)
	}
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if !IsForwarding(k) {
			t.Errorf("%s is a forwarding field", k)
		}
	}
}
