package gateway

import "testing"

// Hedges stay under hedgeShare of the answered requests, after a burst of
// hedgeBurst; a refund gives the token back.
func TestHedgeCap(t *testing.T) {
	st := &serviceState{}
	for i := range hedgeBurst {
		if !st.takeHedge() {
			t.Fatalf("hedge %d of the burst refused", i+1)
		}
	}
	if st.takeHedge() {
		t.Fatal("a hedge past the burst with no request answered")
	}
	for range int(1 / hedgeShare) {
		st.countAnswer("GET", 200)
	}
	if !st.takeHedge() {
		t.Fatalf("no hedge after %d answers", int(1/hedgeShare))
	}
	if st.takeHedge() {
		t.Fatal("two hedges for one token")
	}
	st.refundHedge()
	if !st.takeHedge() {
		t.Fatal("a refunded token is not spent again")
	}
	// A long calm stretch fills the bucket, no more.
	for range 10_000 {
		st.countAnswer("GET", 200)
	}
	n := 0
	for st.takeHedge() {
		n++
	}
	if n != hedgeBurst {
		t.Fatalf("%d hedges after a calm stretch, want %d", n, hedgeBurst)
	}
}
