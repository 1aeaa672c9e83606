package gateway_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
)

// Retries after a failure that reached no upstream are never refused by
// the retry budget, and every failed exchange is counted once.
func TestRetriesOnNodeCrash(t *testing.T) {
	tests := []struct {
		name       string
		dead       int // instances whose port is closed
		concurrent int
		method     string
	}{
		// A kill -9 under load: many requests fail to connect at once.
		{name: "burst of refused GETs", dead: 2, concurrent: 40, method: http.MethodGet},
		{name: "burst of refused POSTs", dead: 2, concurrent: 40, method: http.MethodPost},
		{name: "one at a time", dead: 1, concurrent: 1, method: http.MethodGet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := startBackend(t, "good")
			cat, live := newCatalog(), newLiveness()
			var insts []api.Instance
			for i := range tt.dead {
				insts = append(insts, instanceAt(closedAddr(t), "svc", "dead"+string(rune('0'+i)), "node-dead"+string(rune('0'+i)), ""))
			}
			cat.set("svc", append(insts, good.instance("svc", "node-good", ""))...)
			tg := startGateway(t, gateway.DefaultConfig(), cat, live)
			const rounds = 3
			for round := range rounds {
				var wg sync.WaitGroup
				errs := make(chan error, tt.concurrent)
				start := make(chan struct{})
				for range tt.concurrent {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						req, err := http.NewRequest(tt.method, tg.url+"/svc/", strings.NewReader("x"))
						if err != nil {
							errs <- err
							return
						}
						res, err := tg.client.Do(req)
						if err != nil {
							errs <- err
							return
						}
						body, _ := io.ReadAll(res.Body)
						res.Body.Close()
						if res.StatusCode != http.StatusOK {
							errs <- errors.New(res.Status + ": " + string(body))
						}
					}()
				}
				close(start)
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Errorf("round %d: %v", round, err)
				}
			}
			for _, s := range tg.gw.Stats() {
				if s.Service == "svc" && s.UpstreamErrors != s.Retries {
					// Every request succeeded in the end, so each failed
					// exchange was followed by exactly one retry.
					t.Errorf("%d upstream errors counted for %d retries", s.UpstreamErrors, s.Retries)
				}
			}
		})
	}
}
