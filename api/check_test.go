package api

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// Every bad field of a check is a FieldError naming checks[i].field.
func TestCheckValidation(t *testing.T) {
	cases := []struct {
		check string
		field string
	}{
		{`{"type":"ping"}`, "checks[0].type"},
		{`{}`, "checks[0].type"},
		{`{"type":"http","path":"health"}`, "checks[0].path"},
		{`{"type":"tcp","path":"/x"}`, "checks[0].path"},
		{`{"type":"http","interval":"10ms"}`, "checks[0].interval"},
		{`{"type":"http","interval":"1s","timeout":"2s"}`, "checks[0].timeout"},
		{`{"type":"ttl"}`, "checks[0].ttl"},
		{`{"type":"ttl","ttl":"10s","interval":"5s"}`, "checks[0].interval"},
		{`{"type":"http","ttl":"10s"}`, "checks[0].ttl"},
		{`{"type":"tcp","port":70000}`, "checks[0].port"},
		{`{"type":"tcp","grpc_service":"x"}`, "checks[0].grpc_service"},
		{`{"type":"http","success_before_passing":101}`, "checks[0].success_before_passing"},
		{`{"type":"http","failures_before_warning":3,"failures_before_critical":2}`, "checks[0].failures_before_warning"},
		{`{"type":"http","deregister_critical_after":"500ms"}`, "checks[0].deregister_critical_after"},
		{`{"type":"http","status":"fine"}`, "checks[0].status"},
		{`{"type":"http","name":"Bad Name"}`, "checks[0].name"},
	}
	for _, c := range cases {
		var ch Check
		if err := json.Unmarshal([]byte(c.check), &ch); err != nil {
			t.Fatalf("%s: %v", c.check, err)
		}
		in := Instance{Service: "web", ID: "w1", Address: "127.0.0.1", Port: 80, Checks: []Check{ch}}
		in.Normalize()
		err := in.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: %v, want a FieldError on %s", c.check, err, c.field)
		}
	}
	two := Instance{Service: "web", ID: "w1", Address: "127.0.0.1", Port: 80, Checks: []Check{{Name: "a", Type: "tcp"}, {Name: "a", Type: "http"}}}
	two.Normalize()
	if err := two.Validate(); err == nil || err.(*FieldError).Field != "checks[1].name" {
		t.Errorf("two checks named a: %v", err)
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"ten seconds"`), &d); err == nil {
		t.Error("a bad duration decoded")
	}
}

// Defaults: names from the type, interval 10s, timeout 5s (at most the
// interval), thresholds 1, initial status critical; health is the worst
// check.
func TestCheckDefaultsAndHealth(t *testing.T) {
	in := Instance{Service: "web", ID: "w1", Address: "127.0.0.1", Port: 80, Checks: []Check{
		{Type: "http"}, {Type: "http", Interval: Duration(time.Second)}, {Type: "ttl", TTL: Duration(time.Minute), Status: HealthPassing},
		{Type: "tcp", FailuresBeforeWarning: 3},
	}}
	in.Normalize()
	if err := in.Validate(); err != nil {
		t.Fatal(err)
	}
	c := in.Checks
	if c[0].Name != "http" || c[1].Name != "http-2" || c[2].Name != "ttl" || c[0].Path != "/" {
		t.Fatalf("names: %+v", c)
	}
	if c[0].Interval.D() != 10*time.Second || c[0].Timeout.D() != 5*time.Second || c[1].Timeout.D() != time.Second {
		t.Fatalf("durations: %+v", c[:2])
	}
	if c[0].Status != HealthCritical || c[0].SuccessBeforePassing != 1 || c[0].FailuresBeforeCritical != 1 || c[0].FailuresBeforeWarning != 1 {
		t.Fatalf("defaults: %+v", c[0])
	}
	if c[3].FailuresBeforeCritical != 3 {
		t.Fatalf("failures_before_warning 3 alone: critical after %d", c[3].FailuresBeforeCritical)
	}
	if in.Health != HealthCritical {
		t.Fatalf("health %s", in.Health)
	}
	for i := range in.Checks {
		in.Checks[i].Status = HealthPassing
	}
	in.Checks[1].Status = HealthWarning
	in.Normalize()
	if in.Health != HealthWarning {
		t.Fatalf("health %s, want warning", in.Health)
	}
	b, _ := json.Marshal(in.Checks[0])
	if string(b) == "" || !json.Valid(b) {
		t.Fatal(string(b))
	}
	var back Check
	if err := json.Unmarshal(b, &back); err != nil || !back.SameDefinition(in.Checks[0]) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
}
