package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Check types.
const (
	CheckHTTP = "http" // GET a path: 2xx passing, 429 warning, anything else critical
	CheckTCP  = "tcp"  // connect: passing when the connection is accepted
	CheckGRPC = "grpc" // grpc.health.v1 Check: SERVING passing, anything else critical
	CheckTTL  = "ttl"  // the service reports itself before the TTL runs out
)

// Health statuses of a check and of an instance (the worst of its checks).
const (
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Limits on checks.
const (
	MaxChecks        = 16
	MinCheckInterval = 100 * time.Millisecond
	MaxCheckInterval = 24 * time.Hour
	MaxThreshold     = 100
	// MaxCheckOutput is how much of a check's output is kept on the owning
	// node; MaxStoredOutput is how much of it goes into the registry with a
	// status change.
	MaxCheckOutput  = 4096
	MaxStoredOutput = 256
	MaxNoteLen      = 1024
)

// Check is one health check of an instance: its definition (sent with the
// registration) and, in the registry, the status its node last wrote with
// the output and time of that change. The node that owns the instance runs
// it; only status changes are written.
type Check struct {
	// Name is unique among the instance's checks (a DNS label); it
	// defaults to the type, then "<type>-2", "<type>-3"...
	Name string `json:"name"`
	// Type is http, tcp, grpc or ttl.
	Type string `json:"type"`
	// Path is the http check's request path (default "/").
	Path string `json:"path,omitempty"`
	// Port overrides the instance's port for http, tcp and grpc checks.
	Port int `json:"port,omitempty"`
	// GRPCService is the service name sent in grpc.health.v1 requests;
	// empty asks about the server as a whole.
	GRPCService string `json:"grpc_service,omitempty"`
	// Interval is the time between two runs (default 10s).
	Interval Duration `json:"interval,omitempty"`
	// Timeout bounds one run (default 5s, and at most Interval).
	Timeout Duration `json:"timeout,omitempty"`
	// TTL is how long a ttl check stays as last reported (required).
	TTL Duration `json:"ttl,omitempty"`
	// SuccessBeforePassing is how many consecutive successes turn a check
	// that is not passing to passing (default 1).
	SuccessBeforePassing int `json:"success_before_passing,omitempty"`
	// FailuresBeforeWarning is how many consecutive failures turn a
	// passing check to warning (default: FailuresBeforeCritical, no
	// warning stage).
	FailuresBeforeWarning int `json:"failures_before_warning,omitempty"`
	// FailuresBeforeCritical is how many consecutive failures make the
	// check critical (default 1, or FailuresBeforeWarning when set).
	FailuresBeforeCritical int `json:"failures_before_critical,omitempty"`
	// DeregisterCriticalAfter removes the instance once the check has been
	// critical this long (0: never; at least 1s).
	DeregisterCriticalAfter Duration `json:"deregister_critical_after,omitempty"`
	// Status is the initial status in a registration (default critical:
	// an instance is not routed to before its first check passes) and the
	// current one in the registry.
	Status string `json:"status,omitempty"`
	// Output is the output of the run that changed the status (at most
	// MaxStoredOutput bytes); Since is when the status changed. The node
	// sets both; a registration cannot.
	Output string    `json:"output,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

// Duration is a time.Duration written in JSON as Go's duration syntax
// ("10s", "1m30s"); a bare number is taken as seconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of seconds. A bad one
// is a *json.UnmarshalTypeError, which the decoder completes with the
// field's name.
func (d *Duration) UnmarshalJSON(b []byte) error {
	bad := func(what string) error {
		return &json.UnmarshalTypeError{Value: what + `, not a duration (e.g. "10s", "1m30s")`, Type: reflect.TypeFor[Duration]()}
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return bad("a bad string")
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return bad(strconv.Quote(s))
		}
		*d = Duration(v)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || f < 0 || f > float64(MaxCheckInterval/time.Second)*31 {
		return bad(string(b))
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Check defaults.
const (
	DefaultCheckInterval = 10 * time.Second
	DefaultCheckTimeout  = 5 * time.Second
)

// Normalize fills the check's defaults. Its Name must be set already (see
// NormalizeChecks).
func (c *Check) Normalize() {
	if c.Type == CheckHTTP && c.Path == "" {
		c.Path = "/"
	}
	if c.Type != CheckTTL {
		if c.Interval == 0 {
			c.Interval = Duration(DefaultCheckInterval)
		}
		if c.Timeout == 0 {
			c.Timeout = Duration(min(DefaultCheckTimeout, c.Interval.D()))
		}
	}
	if c.SuccessBeforePassing == 0 {
		c.SuccessBeforePassing = 1
	}
	if c.FailuresBeforeCritical == 0 {
		c.FailuresBeforeCritical = max(1, c.FailuresBeforeWarning)
	}
	if c.FailuresBeforeWarning == 0 {
		c.FailuresBeforeWarning = c.FailuresBeforeCritical
	}
	if c.Status == "" {
		c.Status = HealthCritical
	}
}

// NormalizeChecks names the unnamed checks and fills every check's
// defaults.
func NormalizeChecks(cs []Check) {
	seen := map[string]int{}
	for i := range cs {
		if cs[i].Name != "" {
			seen[cs[i].Name]++
		}
	}
	for i := range cs {
		if cs[i].Name == "" {
			name := cs[i].Type
			for n := 2; seen[name] > 0; n++ {
				name = cs[i].Type + "-" + strconv.Itoa(n)
			}
			seen[name]++
			cs[i].Name = name
		}
		cs[i].Normalize()
	}
}

// ValidateChecks checks every check of a registration; the FieldError names
// the field as checks[i].field.
func ValidateChecks(cs []Check) error {
	if len(cs) > MaxChecks {
		return &FieldError{Field: "checks", Reason: fmt.Sprintf("%d checks, at most %d allowed", len(cs), MaxChecks)}
	}
	names := map[string]bool{}
	for i := range cs {
		if err := cs[i].validate(); err != nil {
			fe := err.(*FieldError)
			fe.Field = fmt.Sprintf("checks[%d].%s", i, fe.Field)
			return fe
		}
		if names[cs[i].Name] {
			return &FieldError{Field: fmt.Sprintf("checks[%d].name", i), Reason: fmt.Sprintf("%q names two checks of the instance", cs[i].Name)}
		}
		names[cs[i].Name] = true
	}
	return nil
}

// validate checks a check with its defaults filled.
func (c *Check) validate() error {
	switch c.Type {
	case CheckHTTP, CheckTCP, CheckGRPC, CheckTTL:
	case "":
		return &FieldError{Field: "type", Reason: "missing: http, tcp, grpc or ttl"}
	default:
		return &FieldError{Field: "type", Reason: fmt.Sprintf("%q is not http, tcp, grpc or ttl", c.Type)}
	}
	if err := ValidateName("name", c.Name); err != nil {
		return err
	}
	if c.Path != "" && c.Type != CheckHTTP {
		return &FieldError{Field: "path", Reason: "only an http check has a path"}
	}
	if c.Type == CheckHTTP && (!strings.HasPrefix(c.Path, "/") || len(c.Path) > MaxPathLen || strings.ContainsAny(c.Path, "# \t\r\n")) {
		return &FieldError{Field: "path", Reason: fmt.Sprintf("%q must start with '/', have no '#' or spaces and be at most %d bytes", c.Path, MaxPathLen)}
	}
	if c.GRPCService != "" && (c.Type != CheckGRPC || len(c.GRPCService) > 256 || strings.ContainsAny(c.GRPCService, " \t\r\n")) {
		return &FieldError{Field: "grpc_service", Reason: "only a grpc check names a gRPC service (at most 256 bytes, no spaces)"}
	}
	if c.Port != 0 && (c.Type == CheckTTL || c.Port < 1 || c.Port > 65535) {
		return &FieldError{Field: "port", Reason: fmt.Sprintf("%d: a port in 1-65535, and a ttl check has none", c.Port)}
	}
	if c.Type == CheckTTL {
		if c.TTL.D() < MinCheckInterval || c.TTL.D() > MaxCheckInterval {
			return &FieldError{Field: "ttl", Reason: fmt.Sprintf("%s: a ttl check needs a ttl in %s-%s", c.TTL.D(), MinCheckInterval, MaxCheckInterval)}
		}
		if c.Interval != 0 || c.Timeout != 0 {
			return &FieldError{Field: "interval", Reason: "a ttl check is reported by the service: it has a ttl, no interval or timeout"}
		}
	} else {
		if c.TTL != 0 {
			return &FieldError{Field: "ttl", Reason: "only a ttl check has a ttl"}
		}
		if c.Interval.D() < MinCheckInterval || c.Interval.D() > MaxCheckInterval {
			return &FieldError{Field: "interval", Reason: fmt.Sprintf("%s is not in %s-%s", c.Interval.D(), MinCheckInterval, MaxCheckInterval)}
		}
		if c.Timeout.D() <= 0 || c.Timeout > c.Interval {
			return &FieldError{Field: "timeout", Reason: fmt.Sprintf("%s must be positive and at most the interval (%s)", c.Timeout.D(), c.Interval.D())}
		}
	}
	for _, t := range []struct {
		field string
		v     int
	}{{"success_before_passing", c.SuccessBeforePassing}, {"failures_before_warning", c.FailuresBeforeWarning}, {"failures_before_critical", c.FailuresBeforeCritical}} {
		if t.v < 1 || t.v > MaxThreshold {
			return &FieldError{Field: t.field, Reason: fmt.Sprintf("%d is not in 1-%d", t.v, MaxThreshold)}
		}
	}
	if c.FailuresBeforeWarning > c.FailuresBeforeCritical {
		return &FieldError{Field: "failures_before_warning", Reason: fmt.Sprintf("%d is more than failures_before_critical (%d)", c.FailuresBeforeWarning, c.FailuresBeforeCritical)}
	}
	if d := c.DeregisterCriticalAfter.D(); d != 0 && (d < time.Second || d > 30*24*time.Hour) {
		return &FieldError{Field: "deregister_critical_after", Reason: fmt.Sprintf("%s is not 0 (never) or in 1s-720h", d)}
	}
	switch c.Status {
	case HealthPassing, HealthWarning, HealthCritical:
	default:
		return &FieldError{Field: "status", Reason: fmt.Sprintf("%q is not passing, warning or critical", c.Status)}
	}
	return nil
}

// SameDefinition reports whether c and o are the same check, whatever
// their status.
func (c Check) SameDefinition(o Check) bool {
	c.Status, c.Output, c.Since = "", "", time.Time{}
	o.Status, o.Output, o.Since = "", "", time.Time{}
	return c == o
}

// healthRank orders statuses from best to worst.
func healthRank(s string) int {
	switch s {
	case HealthPassing:
		return 0
	case HealthWarning:
		return 1
	default:
		return 2
	}
}

// AggregateHealth is the worst status of cs: passing when there is none.
func AggregateHealth(cs []Check) string {
	worst := HealthPassing
	for _, c := range cs {
		if healthRank(c.Status) > healthRank(worst) {
			worst = c.Status
		}
	}
	if healthRank(worst) == 2 {
		return HealthCritical
	}
	return worst
}

// CheckResult is the latest run of one check, as its node knows it (GET
// /v1/checks on the node that owns the instance): the registry holds only
// status changes.
type CheckResult struct {
	Service string `json:"service"`
	ID      string `json:"id"`
	Name    string `json:"name"`
	Type    string `json:"type"`
	// Status is the check's status, after its thresholds; Result is what
	// the latest run said.
	Status string `json:"status"`
	Result string `json:"result,omitempty"`
	// Output is the latest run's output (at most MaxCheckOutput bytes).
	Output string `json:"output,omitempty"`
	// LastRun is when the latest run ended; Since is when Status last
	// changed.
	LastRun time.Time `json:"last_run,omitzero"`
	Since   time.Time `json:"since,omitzero"`
	// Successes and Failures count the consecutive runs of each kind.
	Successes int `json:"successes"`
	Failures  int `json:"failures"`
}

// CheckUpdate is the optional body of PUT
// /v1/checks/{service}/{id}/{check}/{pass|warn|fail}: a ttl check's report.
type CheckUpdate struct {
	Note string `json:"note,omitempty"`
}
