package node

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/herdcluster/herd/acl"
	"github.com/herdcluster/herd/api"
)

// needMaintOf: the node's own maintenance needs operator; a service's, that
// service's policy (as deregistering its instances would).
func needMaintOf(r *http.Request) acl.Need {
	if s := r.URL.Query().Get("service"); s != "" {
		return acl.NeedService(s)
	}
	return acl.NeedOperator
}

// maintService reads and checks ?service= ("" for the node as a whole).
func maintService(w http.ResponseWriter, r *http.Request) (string, bool) {
	q := r.URL.Query()
	if !q.Has("service") {
		return "", true
	}
	s := q.Get("service")
	if err := api.ValidateName("service", s); err != nil {
		writeFieldError(w, err)
		return "", false
	}
	return s, true
}

// maintenance answers GET /v1/maintenance: this node's maintenance state.
func (s *apiServer) maintenance(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.n.maint.get())
}

// enableMaint answers PUT /v1/maintenance[?service=S], with an optional
// body {"reason": R}.
func (s *apiServer) enableMaint(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	service, ok := maintService(w, r)
	if !ok {
		return
	}
	var req api.MaintenanceRequest
	if r.ContentLength != 0 && !decodeBody(w, r, 4096, `{"reason": "..."}`, &req) {
		return
	}
	if err := api.ValidateMaintReason(req.Reason); err != nil {
		writeFieldError(w, err)
		return
	}
	if req.Reason == "" {
		req.Reason = api.DefaultMaintReason
	}
	if service != "" && !s.n.holds(service) {
		writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("this node (%s) holds no instance of service %q", s.n.cfg.Name, service), Reason: "unknown_service"})
		return
	}
	e := &api.MaintEntry{Reason: req.Reason, Since: time.Now().UTC().Truncate(time.Second), By: callerOf(r).name}
	s.changeMaint(w, r, service, e, actMaintEnable)
}

// disableMaint answers DELETE /v1/maintenance[?service=S].
func (s *apiServer) disableMaint(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	service, ok := maintService(w, r)
	if !ok {
		return
	}
	s.changeMaint(w, r, service, nil, actMaintDisable)
}

func (s *apiServer) changeMaint(w http.ResponseWriter, r *http.Request, service string, e *api.MaintEntry, act auditAction) {
	target := s.n.cfg.Name
	if service != "" {
		target += " service " + service
	}
	err := s.n.SetMaintenance(r.Context(), service, e)
	switch {
	case errors.Is(err, errMaintPending):
		s.audit(r, act, target)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: err.Error(), Reason: "registry_unavailable"})
		return
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, api.Error{Error: err.Error(), Reason: "internal"})
		return
	}
	s.audit(r, act, target)
	writeJSON(w, http.StatusOK, s.n.maint.get())
}

// holds reports whether the node holds an instance of service.
func (n *Node) holds(service string) bool {
	for _, in := range n.registrar.Instances() {
		if in.Service == service {
			return true
		}
	}
	return false
}
