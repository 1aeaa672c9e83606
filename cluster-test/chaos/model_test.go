package chaos

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The model must accept what herd may legitimately do and reject the
// anomalies the suite exists to catch. Times are in seconds.
func TestModel(t *testing.T) {
	keys := []Key{{Service: "s", ID: "a", Owner: "n1"}}
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	reg := func(call, ret float64, v, status string) Op {
		return Op{Kind: OpRegister, Key: "s/a", Value: v, Call: sec(call), Return: sec(ret), Status: status}
	}
	dereg := func(call, ret float64, status string) Op {
		return Op{Kind: OpDeregister, Key: "s/a", Call: sec(call), Return: sec(ret), Status: status}
	}
	get := func(call, ret float64, v string) Op {
		got := map[string]string{}
		if v != "" {
			got["s/a"] = v
		}
		return Op{Kind: OpGet, Key: "s/a", Call: sec(call), Return: sec(ret), Status: Ok, Got: got}
	}
	list := func(call, ret float64, v string) Op {
		op := get(call, ret, v)
		op.Kind, op.Key = OpList, "s"
		return op
	}
	window := []Window{{Node: "n1", From: sec(10), To: sec(20)}}
	wiped := []Window{{Node: "n1", From: sec(10), To: sec(20), Wiped: true}}

	for _, tc := range []struct {
		name    string
		ops     []Op
		windows []Window
		ok      bool
	}{
		{"read your write", []Op{reg(1, 2, "v1", Ok), get(3, 4, "v1")}, nil, true},
		{"concurrent read may see either", []Op{reg(1, 1.1, "v1", Ok), reg(2, 4, "v2", Ok), get(3, 3.5, "v1"), list(3.6, 3.7, "v2")}, nil, true},
		{"stale read", []Op{reg(1, 2, "v1", Ok), reg(3, 4, "v2", Ok), get(5, 6, "v1")}, nil, false},
		{"lost registration", []Op{reg(1, 2, "v1", Ok), get(3, 4, "")}, nil, false},
		{"lost registration in a list", []Op{reg(1, 2, "v1", Ok), list(3, 4, "")}, nil, false},
		{"deregistered instance back", []Op{reg(1, 2, "v1", Ok), dereg(3, 4, Ok), get(5, 6, "v1")}, nil, false},
		{"read of a value never written", []Op{get(1, 2, "v9")}, nil, false},
		{"deregister not found while held", []Op{reg(1, 2, "v1", Ok), dereg(3, 4, NotFound)}, nil, false},
		{"failed register may land", []Op{reg(1, 2, "v1", Unknown), get(3, 4, "v1")}, nil, true},
		{"failed register may not land", []Op{reg(1, 2, "v1", Unknown), get(3, 4, "")}, nil, true},
		{"failed register lands late", []Op{reg(1, 2, "v1", Unknown), get(3, 4, ""), get(5, 6, "v1")}, nil, true},
		{"doubtful write cleaned up", []Op{reg(1, 2, "v1", Unknown), get(3, 4, "v1"), get(5, 6, "")}, nil, true},
		{"held key not cleaned up", []Op{reg(0, 0.5, "v0", Ok), reg(1, 2, "v1", Unknown), get(3, 4, "v1"), get(5, 6, "")}, nil, false},
		{"failed deregister may land", []Op{reg(1, 2, "v1", Ok), dereg(3, 4, Unknown), get(5, 6, "")}, nil, true},
		{"refused register changes nothing", []Op{reg(1, 2, "v1", Ok), reg(3, 4, "v2", Refused), get(5, 6, "v1")}, nil, true},
		{"lease lapse in a fault window", []Op{reg(1, 2, "v1", Ok), get(12, 13, ""), get(14, 15, "v1")}, window, true},
		{"lapse not repaired after the window", []Op{reg(1, 2, "v1", Ok), get(12, 13, ""), get(25, 26, "")}, window, false},
		{"lapse outside any window", []Op{reg(1, 2, "v1", Ok), get(25, 26, "")}, window, false},
		{"re-registered with the held value", []Op{reg(1, 2, "v1", Ok), get(12, 13, ""), get(25, 26, "v1")}, window, true},
		{"wiped node forgets", []Op{reg(1, 2, "v1", Ok), get(12, 13, ""), get(25, 26, "")}, wiped, true},
		{"wiped node never returns a newer value", []Op{reg(1, 2, "v1", Ok), get(25, 26, "v2")}, wiped, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := History(tc.ops, keys, tc.windows)
			res := porcupine.CheckOperations(Model(), h)
			if res != tc.ok {
				t.Errorf("linearizable = %v, want %v", res, tc.ok)
			}
		})
	}
}

// The removal-timing and no-loss bookkeeping must see acknowledged writes.
func TestExpected(t *testing.T) {
	r := &Run{keys: []Key{{Service: "s", ID: "a", Owner: "n1"}, {Service: "s", ID: "b", Owner: "n2"}}, wipes: map[string][]time.Duration{}}
	r.C = &Cluster{}
	r.reg = &Registry{}
	r.reg.ops = []Op{
		{Kind: OpRegister, Key: "s/a", Value: "v1", Call: 1, Return: 2, Status: Ok},
		{Kind: OpRegister, Key: "s/a", Value: "v2", Call: 3, Return: 4, Status: Ok},
		{Kind: OpRegister, Key: "s/b", Value: "v3", Call: 1, Return: 2, Status: Ok},
		{Kind: OpRegister, Key: "s/b", Value: "v4", Call: 3, Return: 4, Status: Unknown},
	}
	r.keys = append(r.keys, Key{Service: "s", ID: "c", Owner: "n1"})
	r.reg.ops = append(r.reg.ops,
		Op{Kind: OpRegister, Key: "s/c", Value: "v5", Call: 1, Return: 2, Status: Ok},
		Op{Kind: OpDeregister, Key: "s/c", Call: 3, Return: 4, Status: Ok})
	got := r.expected()
	if v, ok := got["s/c"]; got["s/a"] != "v2" || !ok || v != "" || len(got) != 2 {
		t.Fatalf("expected = %v, want s/a=v2 and s/c absent (s/b has a write of unknown outcome)", got)
	}
	r.wipes["n1"] = []time.Duration{5}
	if got := r.expected(); len(got) != 1 || got["s/c"] != "" {
		t.Fatalf("after wiping n1, expected = %v, want only s/c absent", got)
	}
}
