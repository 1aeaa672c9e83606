package node

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/health"
)

// ttlStatuses maps the last path segment of a ttl report to its status.
var ttlStatuses = map[string]string{"pass": api.HealthPassing, "warn": api.HealthWarning, "fail": api.HealthCritical}

// reportCheck is PUT /v1/checks/{name}/{id}/{check}/{status}: a service's
// report of its ttl check, on the node that owns the instance. The body,
// if any, is {"note": "..."}: the check's output.
func (s *apiServer) reportCheck(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name, id, ok := instancePath(w, r)
	if !ok {
		return
	}
	check, verb := r.PathValue("check"), r.PathValue("status")
	status, ok := ttlStatuses[verb]
	if !ok {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("%q: report pass, warn or fail", truncate(verb, 63)), Field: "status", Reason: "invalid_field"})
		return
	}
	if err := api.ValidateName("check", check); err != nil {
		writeFieldError(w, err)
		return
	}
	var req api.CheckUpdate
	if r.ContentLength != 0 && !decodeBody(w, r, 8<<10, `a report {"note": "..."}`, &req) {
		return
	}
	if len(req.Note) > api.MaxNoteLen {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("the note is over %d bytes", api.MaxNoteLen), Field: "note", Reason: "invalid_field"})
		return
	}
	switch err := s.n.checks.runner.Report(name, id, check, status, req.Note); {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, health.ErrNotTTL):
		writeJSON(w, http.StatusConflict, api.Error{Error: err.Error(), Reason: "not_ttl_check"})
	case errors.Is(err, health.ErrUnknownInstance):
		writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("%s (report to the node that registered it: %s is %s)", err, name+"/"+id, s.ownerOf(name, id)), Reason: "not_found"})
	default:
		writeJSON(w, http.StatusNotFound, api.Error{Error: err.Error(), Reason: "not_found"})
	}
}

// ownerOf says which node holds service/id, as the catalog knows it.
func (s *apiServer) ownerOf(service, id string) string {
	for _, in := range s.n.catalog.Instances(service) {
		if in.ID == id {
			return "held by node " + in.Node
		}
	}
	return "not in the catalog"
}

// checkResults is GET /v1/checks[?service=S]: the latest run of every check
// this node runs (the registry holds only status changes).
func (s *apiServer) checkResults(w http.ResponseWriter, r *http.Request) {
	service := r.URL.Query().Get("service")
	if service != "" {
		if err := api.ValidateName("service", service); err != nil {
			writeFieldError(w, err)
			return
		}
	}
	out := s.n.checks.runner.Results(service)
	if out == nil {
		out = []api.CheckResult{}
	}
	writeJSON(w, http.StatusOK, out)
}
