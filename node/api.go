package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/herdcluster/herd/acl"
	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// maxBodyBytes is the largest request body the agent API reads.
const maxBodyBytes = 1 << 20

// apiServer is the agent HTTP API: /v1/..., /healthz, /readyz.
type apiServer struct {
	n   *Node
	srv *http.Server
}

func newAPIServer(n *Node) (*apiServer, error) {
	s := &apiServer{n: n}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	read, operator := needs(acl.NeedRead), needs(acl.NeedOperator)
	mux.HandleFunc("GET /v1/members", s.guard(read, s.members))
	mux.HandleFunc("GET /v1/services", s.guard(read, s.services))
	mux.HandleFunc("GET /v1/services/{name}", s.guard(read, s.service))
	mux.HandleFunc("GET /v1/services/{name}/instances/{id}", s.guard(read, s.instance))
	mux.HandleFunc("PUT /v1/services/{name}/instances/{id}", s.guard(needServiceOf, s.register))
	mux.HandleFunc("DELETE /v1/services/{name}/instances/{id}", s.guard(needServiceOf, s.deregister))
	mux.HandleFunc("PUT /v1/checks/{name}/{id}/{check}/{status}", s.guard(needServiceOf, s.reportCheck))
	mux.HandleFunc("GET /v1/checks", s.guard(read, s.checkResults))
	mux.HandleFunc("GET /v1/maintenance", s.guard(read, s.maintenance))
	mux.HandleFunc("PUT /v1/maintenance", s.guard(needMaintOf, s.enableMaint))
	mux.HandleFunc("DELETE /v1/maintenance", s.guard(needMaintOf, s.disableMaint))
	// The batch's services are checked one by one in the handler.
	mux.HandleFunc("POST /v1/instances", s.guard(needs(acl.NeedAuthenticated), s.batch))
	mux.HandleFunc("POST /v1/leave", s.guard(operator, s.leave))
	mux.HandleFunc("POST /v1/reload", s.guard(operator, s.reload))
	mux.HandleFunc("GET /v1/snapshot", s.guard(operator, s.snapshot))
	if n.cfg.MetricsAnonymous {
		mux.Handle("GET /metrics", n.metricsHandler())
	} else {
		mux.HandleFunc("GET /metrics", s.guard(read, n.metricsHandler().ServeHTTP))
	}
	mux.HandleFunc("POST /v1/force-leave/{name}", s.guard(operator, s.forceLeave))
	mux.HandleFunc("POST /v1/token/rotate", s.guard(operator, s.rotateToken))
	mux.HandleFunc("GET /v1/keyring", s.guard(operator, s.keyring))
	mux.HandleFunc("POST /v1/keyring", s.guard(operator, s.changeKeyring))
	mux.HandleFunc("GET /v1/acl/tokens", s.guard(operator, s.aclTokens))
	mux.HandleFunc("POST /v1/acl/tokens", s.guard(operator, s.aclTokenCreate))
	mux.HandleFunc("DELETE /v1/acl/tokens/{name}", s.guard(operator, s.aclTokenRevoke))
	mux.HandleFunc("POST /v1/acl/bootstrap", s.guard(operator, s.aclBootstrap))
	mux.HandleFunc("GET /v1/acl/whoami", s.guard(needs(acl.NeedAuthenticated), s.whoami))
	if n.cfg.EnableDebug {
		mux.HandleFunc("GET /debug/pprof/", s.guard(operator, pprof.Index))
		mux.HandleFunc("GET /debug/pprof/profile", s.guard(operator, pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/trace", s.guard(operator, pprof.Trace))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path), Reason: "not_found"})
	})
	guard, err := newAPIGuard(&n.cfg, mux)
	if err != nil {
		return nil, err
	}
	s.srv = &http.Server{
		Handler:           guard,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		// Failed handshakes (plaintext clients, strangers without the CA)
		// are the clients' errors: one debug line each, not a log flood.
		ErrorLog: slog.NewLogLogger(n.logger.With("component", "api").Handler(), slog.LevelDebug),
	}
	return s, nil
}

func (s *apiServer) serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent API: %w", err)
	}
	return nil
}

func (s *apiServer) shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	// Answers may carry secrets (a new token, the join token): no cache
	// keeps them.
	w.Header().Set("Cache-Control", "no-store")
	// Messages quote paths and names as sent: never sniffed as HTML.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func (s *apiServer) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": s.n.cfg.Name})
}

// readiness says whether the node serves with a live registry.
func (n *Node) readiness() api.Readiness {
	switch phase := *n.phase.Load(); phase {
	case "starting":
		return api.Readiness{Status: "starting", Reason: "the node is starting (joining the cluster or waiting for the registry)"}
	case "stopping":
		return api.Readiness{Status: "stopping", Reason: "the node is shutting down"}
	}
	if ok, reason := n.catalog.Synced(); !ok {
		return api.Readiness{Status: "degraded", Reason: reason}
	}
	if !n.cfg.Insecure && n.acls.set.Load() == nil {
		return api.Readiness{Status: "degraded", Reason: "this node has not read the cluster's API tokens yet"}
	}
	if n.acls.publishing.Load() {
		return api.Readiness{Status: "degraded", Reason: "this node is publishing the cluster's management token"}
	}
	if n.registrar.LeaseID() == 0 {
		return api.Readiness{Status: "degraded", Reason: "this node holds no registry lease (no quorum?); its instances are being registered again"}
	}
	return api.Readiness{Status: "ready"}
}

func (s *apiServer) readyz(w http.ResponseWriter, r *http.Request) {
	rd := s.n.readiness()
	code := http.StatusOK
	if rd.Status != "ready" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

func (s *apiServer) running(w http.ResponseWriter) bool {
	if *s.n.phase.Load() != "running" {
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: "the node is " + *s.n.phase.Load(), Reason: "not_running"})
		return false
	}
	return true
}

func (s *apiServer) members(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.n.Members(r.Context()))
}

// Members combines the gossip view with the registry's member list.
func (n *Node) Members(ctx context.Context) api.MembersResponse {
	var resp api.MembersResponse
	byName := map[string]*api.Member{}
	for _, g := range n.gossip.Nodes() {
		m := &api.Member{
			Name: g.Name, ID: g.Meta.ID, Address: g.IP, GossipPort: g.Port,
			GatewayPort: g.Meta.GatewayPort, APIPort: g.Meta.APIPort, ServicePort: g.Meta.ServicePort,
			ClientURL: g.Meta.ClientURL, PeerURL: g.Meta.PeerURL,
			Status: g.Status, Role: g.Meta.Role, Version: g.Meta.Version, Maintenance: g.Meta.Maint,
		}
		if m.Role == "" {
			m.Role = api.RoleNone
		}
		byName[g.Name] = m
	}
	// The phase is stored after Start has set the client: reading it first
	// makes reading the client safe.
	if *n.phase.Load() != "starting" && n.client != nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		list, leader, err := n.registryMembers(cctx)
		if err == nil {
			alarms, aerr := registry.Alarms(cctx, n.client)
			if aerr != nil {
				alarms = []string{"unknown: the alarm list could not be read: " + aerr.Error()}
			}
			resp.Alarms = alarms
		}
		cancel()
		if err != nil {
			resp.Error = "registry roles are from gossip: " + err.Error()
		} else {
			inRegistry := map[string]bool{}
			for _, rm := range list {
				name := rm.Name
				if name == "" {
					name = "(unstarted " + fmt.Sprintf("%x", rm.ID) + ")"
				}
				inRegistry[name] = true
				m, ok := byName[name]
				if !ok {
					m = &api.Member{Name: name, Status: "unknown"}
					if len(rm.PeerURLs) > 0 {
						m.PeerURL = rm.PeerURLs[0]
					}
					if len(rm.ClientURLs) > 0 {
						m.ClientURL = rm.ClientURLs[0]
					}
					byName[name] = m
				}
				m.MemberID = fmt.Sprintf("%x", rm.ID)
				m.Role = api.RoleVoter
				if rm.IsLearner {
					m.Role = api.RoleLearner
				}
				if rm.ID == leader && leader != 0 {
					m.Leader = true
					resp.Leader = m.Name
				}
			}
			for name, m := range byName {
				if !inRegistry[name] && m.Role != api.RoleSpare {
					m.Role = api.RoleNone
				}
			}
		}
	}
	for _, m := range byName {
		resp.Members = append(resp.Members, *m)
	}
	sort.Slice(resp.Members, func(i, j int) bool { return resp.Members[i].Name < resp.Members[j].Name })
	return resp
}

func (s *apiServer) services(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	writeJSON(w, http.StatusOK, api.ServicesResponse{Services: s.n.catalog.Services(), Revision: s.n.catalog.Revision()})
}

func (s *apiServer) service(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name := r.PathValue("name")
	if err := api.ValidateName("service", name); err != nil {
		writeFieldError(w, err)
		return
	}
	q := r.URL.Query()
	passing := q.Has("passing")
	if v := q.Get("passing"); passing && v != "" && v != "true" && v != "1" {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("passing=%q: leave it empty or set it to true", v), Field: "passing", Reason: "invalid_field"})
		return
	}
	var ins []api.Instance
	var rev int64
	var ok bool
	if q.Has("index") || q.Has("wait") {
		if ins, rev, ok = s.block(w, r, name); !ok {
			return
		}
	} else if ins, rev, ok = s.read(w, r, name, ""); !ok {
		return
	}
	if len(ins) == 0 {
		writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("service %q has no registered instances", name), Reason: "unknown_service"})
		return
	}
	if passing {
		ins = passingOnly(ins)
	}
	writeJSON(w, http.StatusOK, api.ServiceResponse{Name: name, Instances: ins, Revision: rev})
}

// passingOnly is a copy of ins with only the instances a gateway routes
// to first: passing and not in maintenance (the catalog's slice is shared
// and never filtered in place).
func passingOnly(ins []api.Instance) []api.Instance {
	out := make([]api.Instance, 0, len(ins))
	for _, in := range ins {
		if in.Health == api.HealthPassing && in.Maintenance == "" {
			out = append(out, in)
		}
	}
	return out
}

// instance answers GET /v1/services/{name}/instances/{id}.
func (s *apiServer) instance(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name, id, ok := instancePath(w, r)
	if !ok {
		return
	}
	ins, rev, ok := s.read(w, r, name, id)
	if !ok {
		return
	}
	if len(ins) == 0 {
		writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("service %q has no instance %q", name, id), Reason: "not_found"})
		return
	}
	writeJSON(w, http.StatusOK, api.InstanceResponse{Instance: ins[0], Revision: rev})
}

// consistentReadTimeout bounds a ?consistent read.
const consistentReadTimeout = 5 * time.Second

// read returns the instances of service (only id, when set) from the
// catalog, or with ?consistent from the registry itself by a linearizable
// read (503 without quorum). It has answered the request when ok is false.
func (s *apiServer) read(w http.ResponseWriter, r *http.Request, service, id string) (ins []api.Instance, rev int64, ok bool) {
	q := r.URL.Query()
	if !q.Has("consistent") {
		var index int64
		ins, index = s.n.catalog.Service(service)
		rev = s.n.catalog.Revision()
		if id == "" {
			w.Header().Set(IndexHeader, strconv.FormatInt(index, 10))
			return ins, rev, true
		}
		// The catalog's slice is shared with the gateway: pick the
		// instance out, never filter it in place.
		i := slices.IndexFunc(ins, func(in api.Instance) bool { return in.ID == id })
		if i < 0 {
			return nil, rev, true
		}
		return ins[i : i+1 : i+1], rev, true
	}
	switch v := q.Get("consistent"); v {
	case "", "true", "1":
	default:
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("consistent=%q: leave it empty or set it to true", v), Field: "consistent", Reason: "invalid_field"})
		return nil, 0, false
	}
	ins, rev, err := registry.ReadInstances(r.Context(), s.n.client, consistentReadTimeout, service, id)
	if err != nil {
		writeRegistryError(w, err)
		return nil, 0, false
	}
	return ins, rev, true
}

func writeFieldError(w http.ResponseWriter, err error) {
	var fe *api.FieldError
	if errors.As(err, &fe) {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fe.Error(), Field: fe.Field, Reason: "invalid_field"})
		return
	}
	writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error(), Reason: "bad_request"})
}

func writeRegistryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, api.ErrInvalid):
		writeFieldError(w, err)
	case errors.Is(err, registry.ErrNoLease):
		// Nothing was written: the client may retry any write at once.
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: err.Error(), Reason: "no_lease"})
	case errors.Is(err, registry.ErrUnavailable):
		// The write may or may not have happened.
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: err.Error(), Reason: "registry_unavailable"})
	case errors.Is(err, registry.ErrConflict):
		writeJSON(w, http.StatusConflict, api.Error{Error: err.Error(), Reason: "conflict"})
	case errors.Is(err, registry.ErrNotFound):
		writeJSON(w, http.StatusNotFound, api.Error{Error: err.Error(), Reason: "not_found"})
	default:
		writeJSON(w, http.StatusInternalServerError, api.Error{Error: err.Error(), Reason: "internal"})
	}
}

// builtin answers 403 when name/id is a built-in instance this node hosts,
// or one its --config-dir defines: only the node itself changes those (an
// API client could otherwise point a node's echo at another address, or
// remove it).
func (s *apiServer) builtin(w http.ResponseWriter, name, id string) bool {
	if s.n.isBuiltin(name, id) {
		writeJSON(w, http.StatusForbidden, api.Error{
			Error:  fmt.Sprintf("%s/%s is this node's built-in instance: only the node changes it (--services)", name, id),
			Reason: "builtin_instance"})
		return true
	}
	if file := s.n.configFileOf(name, id); file != "" {
		writeJSON(w, http.StatusForbidden, api.Error{
			Error:  fmt.Sprintf("%s/%s is defined in %s of this node's --config-dir: change the file and run herd reload", name, id, file),
			Reason: "config_instance"})
		return true
	}
	return false
}

// isBuiltin reports whether service/id is one of the node's built-in
// instances.
func (n *Node) isBuiltin(service, id string) bool {
	if n.host == nil {
		return false
	}
	for _, in := range n.host.Instances() {
		if in.Service == service && in.ID == id {
			return true
		}
	}
	return false
}

// instancePath reads and checks {name} and {id} of an instance path,
// answering 400 when either is not a DNS label.
func instancePath(w http.ResponseWriter, r *http.Request) (name, id string, ok bool) {
	name, id = r.PathValue("name"), r.PathValue("id")
	if err := api.ValidateName("service", name); err != nil {
		writeFieldError(w, err)
		return "", "", false
	}
	if err := api.ValidateName("id", id); err != nil {
		writeFieldError(w, err)
		return "", "", false
	}
	return name, id, true
}

func (s *apiServer) register(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name, id, ok := instancePath(w, r)
	if !ok {
		return
	}
	if s.builtin(w, name, id) {
		return
	}
	var req api.RegisterRequest
	if !decodeBody(w, r, maxBodyBytes, "an instance {\"address\": ..., \"port\": ...}", &req) {
		return
	}
	if req.Path == "/" {
		req.Path = "" // the instance's root: no prefix
	}
	in := api.Instance{
		ID: id, Service: name, Address: req.Address, Port: req.Port, Path: req.Path,
		Tags: req.Tags, Meta: req.Meta, Weight: req.Weight, Checks: req.Checks,
	}
	s.n.prepareChecks(&in)
	if err := s.n.registrar.RegisterKept(r.Context(), in); err != nil {
		writeRegistryError(w, err)
		return
	}
	s.audit(r, actRegister, name+"/"+id)
	in.Node = s.n.cfg.Name
	in.Normalize()
	writeJSON(w, http.StatusOK, in)
}

// batch applies a BatchRequest: every registration and deregistration in
// one registry transaction, or none.
func (s *apiServer) batch(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	var req api.BatchRequest
	if !decodeBody(w, r, maxBodyBytes, `a batch {"register": [...], "deregister": [...]}`, &req) {
		return
	}
	if n := len(req.Register) + len(req.Deregister); n > registry.MaxBatch {
		writeJSON(w, http.StatusRequestEntityTooLarge, api.Error{Error: fmt.Sprintf("the batch makes %d changes; at most %d go in one (send several)", n, registry.MaxBatch), Reason: "batch_too_large"})
		return
	}
	c := callerOf(r)
	reg := make([]api.Instance, 0, len(req.Register))
	var refs []registry.Ref
	for _, b := range req.Register {
		if b.Path == "/" {
			b.Path = "" // the instance's root: no prefix
		}
		in := api.Instance{ID: b.ID, Service: b.Service, Address: b.Address, Port: b.Port, Path: b.Path, Tags: b.Tags, Meta: b.Meta, Weight: b.Weight, Checks: b.Checks}
		s.n.prepareChecks(&in)
		reg = append(reg, in)
		refs = append(refs, registry.Ref{Service: b.Service, ID: b.ID})
	}
	for _, d := range req.Deregister {
		refs = append(refs, registry.Ref{Service: d.Service, ID: d.ID})
	}
	for _, ref := range refs {
		need := acl.NeedService(ref.Service)
		if !acl.Allows(c.policies, need) {
			s.n.deny(w, r, &denial{code: http.StatusForbidden, kind: denyForbidden, needs: need.String(), holder: c.name,
				msg: fmt.Sprintf("the batch changes %s/%s, which needs a token with %s; %q has %s", truncate(ref.Service, 63), truncate(ref.ID, 63), need.Explain(), c.name, strings.Join(c.policies, ", "))})
			return
		}
		if s.builtin(w, ref.Service, ref.ID) {
			return
		}
	}
	if err := s.n.registrar.Batch(r.Context(), reg, refs[len(reg):]); err != nil {
		writeRegistryError(w, err)
		return
	}
	if len(reg) > 0 {
		s.audit(r, actRegister, fmt.Sprintf("a batch of %d", len(reg)))
	}
	if d := len(refs) - len(reg); d > 0 {
		s.audit(r, actDeregister, fmt.Sprintf("a batch of %d", d))
	}
	writeJSON(w, http.StatusOK, api.BatchResponse{Registered: len(reg), Deregistered: len(refs) - len(reg)})
}

func (s *apiServer) deregister(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name, id, ok := instancePath(w, r)
	if !ok {
		return
	}
	if s.builtin(w, name, id) {
		return
	}
	if err := s.n.registrar.Deregister(r.Context(), name, id); err != nil {
		writeRegistryError(w, err)
		return
	}
	s.audit(r, actDeregister, name+"/"+id)
	writeJSON(w, http.StatusOK, map[string]string{"deregistered": name + "/" + id})
}

func (s *apiServer) leave(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	s.audit(r, actLeave, s.n.cfg.Name)
	if err := s.n.Leave(r.Context()); err != nil {
		writeLifecycleError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"left": s.n.cfg.Name, "status": "the node has left the cluster and is stopping"})
}

func (s *apiServer) forceLeave(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	name := r.PathValue("name")
	if err := api.ValidateName("name", name); err != nil {
		writeFieldError(w, err)
		return
	}
	if err := s.n.ForceLeave(r.Context(), name); err != nil {
		writeLifecycleError(w, err)
		return
	}
	s.audit(r, actForceLeave, name)
	writeJSON(w, http.StatusOK, map[string]string{"removed": name})
}

func writeLifecycleError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errNoSuchNode):
		writeJSON(w, http.StatusNotFound, api.Error{Error: err.Error(), Reason: "not_found"})
	case errors.Is(err, registry.ErrNoLease):
		// Nothing was written: the client may retry any write at once.
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: err.Error(), Reason: "no_lease"})
	case errors.Is(err, registry.ErrUnavailable):
		// The write may or may not have happened.
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: err.Error(), Reason: "registry_unavailable"})
	default:
		writeJSON(w, http.StatusConflict, api.Error{Error: err.Error(), Reason: "refused"})
	}
}

// snapshot streams a snapshot of the registry. The stream has no write
// timeout of its own beyond the server's; a failure midway closes the
// connection, so a truncated file is never mistaken for a good one (restore
// checks the snapshot's hash too).
func (s *apiServer) snapshot(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	// A large registry takes longer than the API's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	rc, err := registry.Snapshot(r.Context(), s.n.client)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	defer rc.Close()
	s.audit(r, actSnapshot, "registry")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="herd.snapshot"`)
	if _, err := io.Copy(w, rc); err != nil {
		s.n.logger.Warn("snapshot stream failed", "err", err)
		panic(http.ErrAbortHandler)
	}
}

// rotateToken replaces the cluster's join secret and answers the new token.
func (s *apiServer) rotateToken(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	tok, err := s.n.RotateToken(r.Context())
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	s.audit(r, actTokenRotate, "join-secret")
	writeJSON(w, http.StatusOK, api.TokenResponse{Token: tok.String()})
}

func keyringResponse(kr secure.Keyring) *api.KeyringResponse {
	r := &api.KeyringResponse{Primary: keyID(kr.Primary), Keys: []string{}}
	for _, k := range kr.Keys {
		r.Keys = append(r.Keys, keyID(k))
	}
	return r
}

// keyring answers the cluster's keyring and this node's, by key IDs.
func (s *apiServer) keyring(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	cluster, local, err := s.n.Keyring(r.Context())
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	resp := keyringResponse(cluster)
	resp.Local = keyringResponse(local)
	writeJSON(w, http.StatusOK, resp)
}

// changeKeyring installs, uses or removes a gossip key cluster-wide.
func (s *apiServer) changeKeyring(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	var req api.KeyringRequest
	if !decodeBody(w, r, 4096, "a keyring request {\"op\", \"key\"}", &req) {
		return
	}
	key, err := secure.DecodeGossipKey(req.Key)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error(), Field: "key", Reason: "invalid_field"})
		return
	}
	kr, err := s.n.ChangeKeyring(r.Context(), req.Op, key)
	if errors.Is(err, ErrKeyring) {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error(), Field: "op", Reason: "invalid_field"})
		return
	}
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	s.audit(r, actKeyring, req.Op+" "+keyID(key))
	writeJSON(w, http.StatusOK, keyringResponse(kr))
}

// decodeBody reads r's body, at most limit bytes, into v: one JSON value
// with no unknown field and nothing but white space after it. what names
// the expected value in errors. It has answered the request (a 400 naming
// the field, or a 413) when it returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, what string, v any) bool {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// The whole body counts against the limit, and nothing but
		// white space may follow the value.
		var tail []byte
		if tail, err = io.ReadAll(io.MultiReader(dec.Buffered(), body)); err == nil && len(bytes.TrimSpace(tail)) > 0 {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: "body holds more than one JSON value", Reason: "bad_json"})
			return false
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		writeJSON(w, http.StatusRequestEntityTooLarge, api.Error{Error: fmt.Sprintf("request body is over %d bytes", limit), Reason: "body_too_large"})
	case errors.As(err, &typ) && typ.Field == "":
		writeJSON(w, http.StatusBadRequest, api.Error{Error: "body must be a JSON object (" + what + "), got a JSON " + typ.Value, Reason: "bad_json"})
	case errors.As(err, &typ):
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("invalid %s: want %s, got %s", typ.Field, typ.Type, typ.Value), Field: typ.Field, Reason: "invalid_field"})
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		writeJSON(w, http.StatusBadRequest, api.Error{Error: "body is not valid JSON: " + err.Error(), Reason: "bad_json"})
	case errors.Is(err, io.EOF):
		writeJSON(w, http.StatusBadRequest, api.Error{Error: "body is empty: send " + what, Reason: "bad_json"})
	default:
		// json names an unknown field as `json: unknown field "x"`.
		field := ""
		if _, after, ok := strings.Cut(err.Error(), "unknown field "); ok {
			field = strings.Trim(after, `"`)
		}
		writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error(), Field: field, Reason: "invalid_field"})
	}
	return false
}
