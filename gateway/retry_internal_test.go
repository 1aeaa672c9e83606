package gateway

import (
	"testing"
	"time"
)

// The automatic hedge delay: a default until the service has a p95, then
// the p95 within bounds, so that a p95 polluted by past slow requests never
// lets a hung instance stall a request for long.
func TestHedgeDelayAuto(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		want    time.Duration
	}{
		{name: "no samples", want: defaultHedgeDelay},
		{name: "too few samples", samples: repeat(5, 3*time.Millisecond), want: defaultHedgeDelay},
		{name: "fast service", samples: repeat(40, 200*time.Microsecond), want: minHedgeDelay},
		{name: "p95 in range", samples: repeat(40, 40*time.Millisecond), want: 50 * time.Millisecond},
		{name: "polluted by slow requests", samples: repeat(40, 4*time.Second), want: maxHedgeDelay},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &retryTransport{g: &Gateway{cfg: Config{HedgeAuto: true}}}
			st := &serviceState{}
			for _, d := range tt.samples {
				st.latency.observe(d)
			}
			if got := tr.hedgeDelay(st); got != tt.want {
				t.Fatalf("hedge delay %s, want %s", got, tt.want)
			}
		})
	}
}

func repeat(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}
