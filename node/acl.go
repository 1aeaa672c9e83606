package node

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/acl"
	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
)

// Access control on the agent API (package acl has the model).
//
// Every /v1 route declares what it needs (acl.Need). A request is taken
// for one of three callers:
//   - a token, from Authorization: Bearer or X-Herd-Token, looked up by its
//     hash in this node's token set. The set is a mirror of the registry's
//     token prefix kept by a watch (re-listed on compaction), so a revoked
//     token is refused on every node as soon as the watch delivers the
//     delete, and no request reads the registry;
//   - a client certificate issued by the cluster CA (a node's, or one from
//     `herd tls cert create`): operator. Whoever holds one can reach the
//     registry itself, so the API grants it everything; this is what the
//     CLI presents with --data-dir, and what keeps the cluster's own
//     tooling working with no token to hand around;
//   - anonymous: refused (401), except for reads with --anonymous-read.
//
// A token is preferred to a certificate when a request has both. In
// --insecure mode there is no access control (there is no TLS to carry a
// token safely either); the node says so at start.

// bootstrapTokenName names the management token that the node creating a
// cluster makes, and that `herd acl bootstrap --reset` replaces.
const bootstrapTokenName = "bootstrap"

// aclState is the node's view of the API tokens, and its audit counters.
type aclState struct {
	// set is nil until the first list of the token prefix; raw is the
	// registry's values it was made from, for the reaper.
	set    atomic.Pointer[acl.Set]
	raw    atomic.Pointer[map[string][]byte]
	synced atomic.Bool
	// publishing is set from the start of a node whose data dir holds a
	// management token until it has made it the cluster's (or found the
	// cluster bootstrapped): the node is not ready until its own token set
	// holds it, so that the token it printed works once /readyz says so.
	publishing atomic.Bool
	// bypass turns access control off; only the overhead benchmark sets
	// it, to measure against none.
	bypass atomic.Bool

	denied  [numDenials]atomic.Uint64
	changes [numActions]atomic.Uint64

	// Denials are logged at most logBurst a second; the rest are counted
	// and the count is logged with the next line.
	logMu      sync.Mutex
	logSecond  int64
	logged     int
	suppressed int
}

const logBurst = 20

// Why a request was refused (the reason field of its error and the
// herd_acl_denied_total label).
type denialKind int

const (
	denyNoToken denialKind = iota
	denyInvalidToken
	denyUnknownToken
	denyExpiredToken
	denyForbidden
	numDenials
)

var denialReasons = [numDenials]string{"token_required", "invalid_token", "unknown_token", "token_expired", "permission_denied"}

// What a change made through the API was (herd_acl_changes_total).
type auditAction int

const (
	actRegister auditAction = iota
	actDeregister
	actLeave
	actForceLeave
	actSnapshot
	actTokenRotate
	actKeyring
	actACLTokenCreate
	actACLTokenRevoke
	actACLBootstrap
	actMaintEnable
	actMaintDisable
	actReload
	numActions
)

var actionNames = [numActions]string{"register", "deregister", "leave", "force_leave", "snapshot", "join_token_rotate",
	"keyring", "acl_token_create", "acl_token_revoke", "acl_bootstrap", "maint_enable", "maint_disable", "reload"}

// Caller kinds (besides node-certificate and client-certificate).
const (
	callerToken     = "token"
	callerAnonymous = "anonymous"
)

// caller is who a request comes from.
type caller struct {
	name     string // the token's name, cert:<name>, or anonymous
	kind     string
	policies []string
	expires  time.Time
	// serial is a certificate's serial number (hex): the audit log names
	// the certificate by it, since its common name is the holder's choice.
	serial string
}

type callerKey struct{}

func callerOf(r *http.Request) caller {
	if c, ok := r.Context().Value(callerKey{}).(caller); ok {
		return c
	}
	return caller{name: callerAnonymous, kind: callerAnonymous}
}

// denial is a refused request: its status, reason and message.
type denial struct {
	code   int
	kind   denialKind
	msg    string
	needs  string // the policy that would do, on a 403
	holder string // the token's name when the token was valid
}

// tokenHelp says where a token comes from, in 401s.
const tokenHelp = "send an API token as Authorization: Bearer <token> or X-Herd-Token (the CLI reads HERD_TOKEN, --token or --token-file); " +
	"the node that created the cluster printed its management token and keeps it in its data dir (acl-token); " +
	"`herd acl token create` makes more"

// requestToken reads the token a request carries, "" when none. Two
// different tokens, or a scheme other than Bearer, are errors.
func requestToken(r *http.Request) (string, error) {
	auth, xt := r.Header.Values("Authorization"), r.Header.Values("X-Herd-Token")
	if len(auth) > 1 || len(xt) > 1 {
		return "", errors.New("the request carries more than one Authorization or X-Herd-Token header")
	}
	var tok string
	if len(auth) == 1 {
		scheme, v, _ := strings.Cut(strings.TrimSpace(auth[0]), " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", errors.New("Authorization: the agent API takes only the Bearer scheme (Authorization: Bearer <token>)")
		}
		tok = strings.TrimSpace(v)
		if tok == "" {
			return "", errors.New("Authorization: Bearer carries no token")
		}
	}
	if len(xt) == 1 {
		x := strings.TrimSpace(xt[0])
		if tok != "" && x != tok {
			return "", errors.New("Authorization and X-Herd-Token carry different tokens: send one")
		}
		tok = x
	}
	return tok, nil
}

// authenticate finds the request's caller and checks that it may do what
// need says.
func (n *Node) authenticate(r *http.Request, need acl.Need) (caller, *denial) {
	if n.cfg.Insecure || n.acls.bypass.Load() {
		return caller{name: callerAnonymous, kind: callerAnonymous, policies: []string{acl.PolicyOperator}}, nil
	}
	secret, err := requestToken(r)
	if err != nil {
		return caller{}, &denial{code: http.StatusUnauthorized, kind: denyInvalidToken, msg: err.Error()}
	}
	var c caller
	switch {
	case secret != "":
		if secret, err = acl.CheckSecret(secret); err != nil {
			return caller{}, &denial{code: http.StatusUnauthorized, kind: denyInvalidToken, msg: "the token is " + err.Error()}
		}
		set := n.acls.set.Load()
		if set == nil {
			return caller{}, &denial{code: http.StatusServiceUnavailable, msg: "this node has not read the cluster's API tokens yet (is the registry reachable?); try again"}
		}
		t := set.Lookup(secret)
		if t == nil {
			return caller{}, &denial{code: http.StatusUnauthorized, kind: denyUnknownToken, msg: "the token is unknown to this cluster: revoked, or never issued by it"}
		}
		if t.Expired(time.Now()) {
			return caller{}, &denial{code: http.StatusUnauthorized, kind: denyExpiredToken, holder: t.Name,
				msg: fmt.Sprintf("token %q expired at %s", t.Name, t.ExpiresAt.UTC().Format(time.RFC3339))}
		}
		c = caller{name: t.Name, kind: callerToken, policies: t.Policies, expires: t.ExpiresAt}
	case r.TLS != nil && len(r.TLS.VerifiedChains) > 0:
		leaf := r.TLS.VerifiedChains[0][0]
		kind := "client-certificate" // herd tls cert create --client
		if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			kind = "node-certificate"
		}
		c = caller{name: "cert:" + leaf.Subject.CommonName, kind: kind, serial: leaf.SerialNumber.Text(16),
			policies: []string{acl.PolicyOperator}}
	case n.cfg.AnonymousRead && need.IsRead():
		return caller{name: callerAnonymous, kind: callerAnonymous, policies: []string{acl.PolicyRead}}, nil
	default:
		msg := "this request needs an API token: " + tokenHelp
		if n.cfg.AnonymousRead {
			msg = "only reads are open without a token (--anonymous-read): " + tokenHelp
		}
		return caller{}, &denial{code: http.StatusUnauthorized, kind: denyNoToken, msg: msg}
	}
	if !acl.Allows(c.policies, need) {
		return c, &denial{code: http.StatusForbidden, kind: denyForbidden, needs: need.String(), holder: c.name,
			msg: fmt.Sprintf("%s %s needs a token with %s; %q has %s",
				r.Method, truncate(r.URL.Path, 200), need.Explain(), c.name, strings.Join(c.policies, ", "))}
	}
	return c, nil
}

// guard runs h for callers whose policies satisfy what need says the
// request needs, and refuses the rest.
func (s *apiServer) guard(need func(*http.Request) acl.Need, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, d := s.n.authenticate(r, need(r))
		if d != nil {
			s.n.deny(w, r, d)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	}
}

func needs(n acl.Need) func(*http.Request) acl.Need { return func(*http.Request) acl.Need { return n } }

// needServiceOf: changing the instances of the path's service.
func needServiceOf(r *http.Request) acl.Need { return acl.NeedService(r.PathValue("name")) }

// deny answers a refused request, counts it and logs it (rate-limited).
func (n *Node) deny(w http.ResponseWriter, r *http.Request, d *denial) {
	if d.code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, d.code, api.Error{Error: d.msg, Reason: "acl_not_synced"})
		return
	}
	n.acls.denied[d.kind].Add(1)
	reason := denialReasons[d.kind]
	if d.code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="herd"`)
	}
	writeJSON(w, d.code, api.Error{Error: d.msg, Reason: reason, Policy: d.needs})
	if suppressed, ok := n.acls.mayLog(time.Now()); ok {
		holder := d.holder
		if holder == "" {
			holder = "(none)"
		}
		args := []any{"component", "acl", "status", d.code, "reason", reason, "token", holder, "method", r.Method,
			"path", truncate(r.URL.Path, 200), "remote", r.RemoteAddr}
		if d.needs != "" {
			args = append(args, "needs", d.needs)
		}
		if suppressed > 0 {
			args = append(args, "suppressed_before", suppressed)
		}
		n.logger.Warn("agent API request refused", args...)
	}
}

// mayLog reports whether a denial may be logged at now, and how many were
// not since the last that was.
func (a *aclState) mayLog(now time.Time) (int, bool) {
	a.logMu.Lock()
	defer a.logMu.Unlock()
	if sec := now.Unix(); sec != a.logSecond {
		a.logSecond, a.logged = sec, 0
	}
	if a.logged >= logBurst {
		a.suppressed++
		return 0, false
	}
	a.logged++
	s := a.suppressed
	a.suppressed = 0
	return s, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// audit logs and counts a change made through the API, naming its caller
// (never a secret).
func (s *apiServer) audit(r *http.Request, act auditAction, target string) {
	s.n.acls.changes[act].Add(1)
	c := callerOf(r)
	args := []any{"component", "acl", "action", actionNames[act], "target", target, "token", c.name, "caller", c.kind}
	if c.serial != "" {
		args = append(args, "cert_serial", c.serial)
	}
	s.n.logger.Info("agent API change", append(args, "remote", r.RemoteAddr)...)
}

// followTokens keeps the node's token set a mirror of the registry's.
func (n *Node) followTokens(ctx context.Context) {
	n.tokens.FollowTokens(ctx, n.logger, func(tokens map[string][]byte, rev int64) {
		list := make([]*acl.Token, 0, len(tokens))
		for name, v := range tokens {
			var t acl.Token
			if err := json.Unmarshal(v, &t); err != nil || t.Hash == "" {
				n.logger.Warn("ignoring an undecodable API token in the registry", "token", name)
				continue
			}
			t.Name = name
			list = append(list, &t)
		}
		n.acls.raw.Store(&tokens)
		n.acls.set.Store(acl.NewSet(list, rev))
	}, func(synced bool, reason string) {
		if n.acls.synced.Swap(synced) && !synced {
			n.logger.Warn("lost the watch on the API tokens; checking requests against the last set read", "reason", reason)
		}
	})
}

// Expired tokens stay listed (as expired) for reapAfter, then any node
// removes them; each node looks every reapEvery (jittered).
const (
	defaultReapAfter = time.Hour
	defaultReapEvery = 5 * time.Minute
)

// reapTokens removes tokens expired for longer than reapAfter, until ctx
// is done. Every node runs it; DeleteIf makes the race between them
// harmless.
func (n *Node) reapTokens(ctx context.Context) {
	after, every := durationOr(n.cfg.aclReapAfter, defaultReapAfter), durationOr(n.cfg.aclReapEvery, defaultReapEvery)
	for sleep(ctx, every/2+rand.N(every)) == nil {
		raw := n.acls.raw.Load()
		if raw == nil {
			continue
		}
		now := time.Now()
		for name, v := range *raw {
			var t acl.Token
			if json.Unmarshal(v, &t) != nil || t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt.Add(after)) {
				continue
			}
			if ok, err := n.tokens.DeleteIf(ctx, name, v); err == nil && ok {
				n.logger.Info("removed an expired API token", "component", "acl", "token", name,
					"expired_at", t.ExpiresAt.UTC().Format(time.RFC3339))
			}
		}
	}
}

// durationOr is d, or def when d is not set.
func durationOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// issueToken makes a token's record and secret.
func issueToken(name string, policies []string, ttl time.Duration, by string) (acl.Token, string, error) {
	secret, err := acl.NewSecret()
	if err != nil {
		return acl.Token{}, "", err
	}
	now := time.Now().UTC().Truncate(time.Second)
	t := acl.Token{Name: name, Policies: policies, Hash: acl.Hash(secret), CreatedAt: now, CreatedBy: by}
	if ttl > 0 {
		t.ExpiresAt = now.Add(ttl)
	}
	return t, secret, nil
}

func tokenView(t acl.Token, now time.Time) api.ACLToken {
	return api.ACLToken{Name: t.Name, Policies: t.Policies, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt,
		Expired: t.Expired(now), CreatedBy: t.CreatedBy}
}

// bootstrapACL writes secret as the cluster's management token (see
// registry.ACL.Bootstrap for reset).
// It returns once this node's token set holds the new token.
func (n *Node) bootstrapACL(ctx context.Context, secret string, reset bool, by string) (acl.Token, error) {
	t := acl.Token{Name: bootstrapTokenName, Policies: []string{acl.PolicyOperator}, Hash: acl.Hash(secret),
		CreatedAt: time.Now().UTC().Truncate(time.Second), CreatedBy: by}
	b, err := json.Marshal(t)
	if err != nil {
		return t, err
	}
	rev, err := n.tokens.Bootstrap(ctx, bootstrapTokenName, b, reset)
	if err == nil {
		n.awaitTokens(ctx, rev)
	}
	return t, err
}

// awaitTokens returns once this node's token set reflects registry
// revision rev (the watch brings it within milliseconds), after 5s, or when
// ctx is done: a token an API call made or revoked works, or is refused,
// on this node by the time the call answers.
func (n *Node) awaitTokens(ctx context.Context, rev int64) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	giveUp := time.NewTimer(5 * time.Second)
	defer giveUp.Stop()
	for n.acls.set.Load().Revision() < rev {
		select {
		case <-ctx.Done():
			return
		case <-giveUp.C:
			n.logger.Warn("this node's token set is behind the registry", "component", "acl", "want_revision", rev,
				"have_revision", n.acls.set.Load().Revision())
			return
		case <-tick.C:
		}
	}
}

// publishManagementToken makes the management token in this node's data
// dir (the node created the cluster, or was restored from a snapshot:
// replace) the cluster's, unless the cluster was bootstrapped already. It
// retries until the registry answers or ctx is done.
func (n *Node) publishManagementToken(ctx context.Context, replace bool) {
	defer n.acls.publishing.Store(false)
	b, err := os.ReadFile(n.files().ACLTokenFile())
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var secret string
	if err == nil {
		secret, err = acl.CheckSecret(string(b))
	}
	if err != nil {
		n.logger.Warn("not publishing the management token of the data dir", "file", n.files().ACLTokenFile(), "err", err)
		return
	}
	for {
		_, err := n.bootstrapACL(ctx, secret, replace, "node:"+n.cfg.Name)
		switch {
		case err == nil:
			n.logger.Info("published the cluster's management token (its hash)", "token", bootstrapTokenName, "file", n.files().ACLTokenFile())
			if replace {
				n.warnRestoredTokens(ctx)
			}
			return
		case errors.Is(err, registry.ErrBootstrapped):
			return
		}
		if sleep(ctx, time.Second) != nil {
			return
		}
	}
}

// warnRestoredTokens names the API tokens a snapshot brought back: one
// revoked after the snapshot was taken is valid again until revoked anew.
func (n *Node) warnRestoredTokens(ctx context.Context) {
	all, err := n.tokens.List(ctx)
	if err != nil {
		return
	}
	var names []string
	for name := range all {
		if name != bootstrapTokenName {
			names = append(names, name)
		}
	}
	if len(names) > 0 {
		sort.Strings(names)
		n.logger.Warn("the restored snapshot brought back these API tokens; revoke any that was revoked after the snapshot was taken",
			"component", "acl", "tokens", strings.Join(names, ","))
	}
}

// The ACL endpoints.

func (s *apiServer) aclTokens(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	all, err := s.n.tokens.List(r.Context())
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	now := time.Now()
	resp := api.ACLTokensResponse{Tokens: []api.ACLToken{}}
	for name, v := range all {
		var t acl.Token
		if json.Unmarshal(v, &t) != nil {
			continue
		}
		t.Name = name
		resp.Tokens = append(resp.Tokens, tokenView(t, now))
	}
	sort.Slice(resp.Tokens, func(i, j int) bool { return resp.Tokens[i].Name < resp.Tokens[j].Name })
	writeJSON(w, http.StatusOK, resp)
}

// maxTokenTTL bounds --ttl.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (s *apiServer) aclTokenCreate(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	var req api.ACLTokenRequest
	if !decodeBody(w, r, 64<<10, "a token request {\"name\", \"policies\", \"ttl\"}", &req) {
		return
	}
	if err := api.ValidateName("name", req.Name); err != nil {
		writeFieldError(w, err)
		return
	}
	if req.Name == bootstrapTokenName {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("the name %q is the management token's (herd acl bootstrap --reset replaces it): choose another", req.Name), Field: "name", Reason: "invalid_field"})
		return
	}
	if err := acl.ValidatePolicies(req.Policies); err != nil {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error(), Field: "policies", Reason: "invalid_field"})
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Second || d > maxTokenTTL {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("ttl %q: want a duration from 1s to %s (e.g. 90m, 24h)", truncate(req.TTL, 40), maxTokenTTL), Field: "ttl", Reason: "invalid_field"})
			return
		}
		ttl = d
	}
	t, secret, err := issueToken(req.Name, req.Policies, ttl, callerOf(r).name)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	b, err := json.Marshal(t)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	rev, err := s.n.tokens.Create(r.Context(), t.Name, b)
	if err != nil {
		if errors.Is(err, registry.ErrTokenExists) {
			writeJSON(w, http.StatusConflict, api.Error{Error: fmt.Sprintf("a token named %q exists: revoke it first, or choose another name", t.Name), Field: "name", Reason: "conflict"})
			return
		}
		writeRegistryError(w, err)
		return
	}
	s.n.awaitTokens(r.Context(), rev)
	s.audit(r, actACLTokenCreate, t.Name+" ("+strings.Join(t.Policies, ",")+")")
	v := tokenView(t, time.Now())
	v.Secret = secret
	writeJSON(w, http.StatusCreated, v)
}

func (s *apiServer) aclTokenRevoke(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	name := r.PathValue("name")
	if err := api.ValidateName("name", name); err != nil {
		writeFieldError(w, err)
		return
	}
	rev, err := s.n.tokens.Delete(r.Context(), name)
	if err != nil {
		if errors.Is(err, registry.ErrNoToken) {
			writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("no token named %q", name), Reason: "not_found"})
			return
		}
		writeRegistryError(w, err)
		return
	}
	s.n.awaitTokens(r.Context(), rev)
	s.audit(r, actACLTokenRevoke, name)
	writeJSON(w, http.StatusOK, map[string]string{"revoked": name})
}

// aclBootstrap makes the management token: on a cluster that has none
// (made before ACLs), or with reset, replacing it.
func (s *apiServer) aclBootstrap(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) || !s.secured(w) {
		return
	}
	var req api.ACLBootstrapRequest
	if r.ContentLength != 0 && !decodeBody(w, r, 4096, "a bootstrap request {\"reset\": true|false}", &req) {
		return
	}
	secret, err := acl.NewSecret()
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	t, err := s.n.bootstrapACL(r.Context(), secret, req.Reset, callerOf(r).name)
	if errors.Is(err, registry.ErrBootstrapped) {
		writeJSON(w, http.StatusConflict, api.Error{Error: "the cluster's ACLs were bootstrapped already: `herd acl bootstrap --reset` replaces the management token", Reason: "bootstrapped"})
		return
	}
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	s.audit(r, actACLBootstrap, t.Name)
	v := tokenView(t, time.Now())
	v.Secret = secret
	writeJSON(w, http.StatusCreated, v)
}

func (s *apiServer) whoami(w http.ResponseWriter, r *http.Request) {
	c := callerOf(r)
	writeJSON(w, http.StatusOK, api.WhoAmI{Name: c.name, Kind: c.kind, Policies: c.policies, Expires: c.expires})
}

// secured answers 409 on an --insecure node, which has no access control.
func (s *apiServer) secured(w http.ResponseWriter) bool {
	if s.n.cfg.Insecure {
		writeJSON(w, http.StatusConflict, api.Error{Error: "this cluster runs with --insecure: it has no secrets and no access control to manage", Reason: "insecure"})
		return false
	}
	return true
}
