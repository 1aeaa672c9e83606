package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/herdcluster/herd/api"
)

// Blocking queries (GET /v1/services/{name}?index=N&wait=D), after
// Consul's: the answer waits until the service's index (the registry
// revision of its last change: an instance added, changed or removed,
// health and maintenance included) is past N, or until D (plus up to a
// sixteenth, so that many watchers do not come back at once), and says the
// index in X-Herd-Index. The index only goes forward on a node; a client
// that sees it go back (another node, a restored registry) starts again
// from 0. They are served from the node's catalog: no registry read.
const (
	defaultWait = 5 * time.Minute
	maxWait     = 10 * time.Minute
)

// IndexHeader carries a service's index in the answers of
// GET /v1/services/{name}.
const IndexHeader = "X-Herd-Index"

// block answers the blocking form of GET /v1/services/{name}: it returns
// the instances and the catalog revision once the wait is over, with
// X-Herd-Index set; it has answered the request when ok is false.
func (s *apiServer) block(w http.ResponseWriter, r *http.Request, service string) (ins []api.Instance, rev int64, ok bool) {
	q := r.URL.Query()
	if q.Has("consistent") {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: "index/wait and consistent cannot be combined: a blocking query is served from the node's catalog", Field: "consistent", Reason: "invalid_field"})
		return nil, 0, false
	}
	var after int64
	if v := q.Get("index"); v != "" || q.Has("index") {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("index=%q: want the X-Herd-Index of an earlier answer (a non-negative integer)", v), Field: "index", Reason: "invalid_field"})
			return nil, 0, false
		}
		after = n
	}
	wait := defaultWait
	if v := q.Get("wait"); v != "" || q.Has("wait") {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > maxWait {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("wait=%q: want a duration such as 30s, at most %s", v, maxWait), Field: "wait", Reason: "invalid_field"})
			return nil, 0, false
		}
		wait = d
	}
	wait += rand.N(wait/16 + 1)
	// The wait outlasts the server's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 10*time.Second))
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	stop := context.AfterFunc(s.n.bgCtx, cancel)
	defer stop()
	ins, index := s.n.catalog.Service(service)
	if after > 0 {
		ins, index = s.n.catalog.Wait(ctx, service, after)
	}
	w.Header().Set(IndexHeader, strconv.FormatInt(index, 10))
	return ins, s.n.catalog.Revision(), true
}
