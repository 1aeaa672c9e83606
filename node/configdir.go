package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/registry"
)

// Service definitions on disk (--config-dir): one JSON file per instance
// (api.ServiceDefinition), registered by the node at start and again on
// every reload (SIGHUP, herd reload, POST /v1/reload):
//
//   - added and changed files are registered, removed ones deregistered;
//     a changed file whose checks are unchanged keeps their status;
//   - a file that does not parse or validate is reported (the log, the
//     reload's answer) and its instance stays as an earlier read left it;
//     the other files are applied all the same;
//   - instances from files are the node's, like its built-ins: the agent
//     API cannot change or remove them, and they are not kept in the
//     registry (the files are read again at start);
//   - a registration the registry did not take is tried again every
//     configRetry until it lands or the file changes.
type configState struct {
	dir  string
	kick chan struct{}

	mu   sync.Mutex // one reload at a time; guards the fields below
	defs map[string]configDef
	// failed holds the keys whose registration failed: the retries go
	// after them only (an instance that deregister_critical_after removed
	// is registered again at the next explicit reload, not at once).
	failed map[string]bool

	// last and files are what the last read found (the files' states, and
	// the file of each instance they define), for lookups that must not
	// wait for a reload in progress: the API's, /metrics.
	last  atomic.Pointer[api.ReloadResponse]
	files atomic.Pointer[map[string]string]
}

// configDef is an instance a file defines.
type configDef struct {
	file string
	in   api.Instance
}

// maxDefinitionBytes bounds a service definition file.
const maxDefinitionBytes = 1 << 20

// configRetry spaces the attempts of registrations that failed.
const configRetry = 2 * time.Second

// errNoConfigDir: the node was started without --config-dir.
var errNoConfigDir = errors.New("this node has no --config-dir to reload")

func newConfigState(dir string) *configState {
	return &configState{dir: dir, kick: make(chan struct{}, 1), defs: map[string]configDef{}, failed: map[string]bool{}}
}

// counts says how many files the last read found good and bad.
func (c *configState) counts() (ok, bad int) {
	last := c.last.Load()
	if last == nil {
		return 0, 0
	}
	for _, f := range last.Files {
		if f.Error != "" {
			bad++
		} else {
			ok++
		}
	}
	return ok, bad
}

// RequestReload asks the node to read its --config-dir again (SIGHUP); it
// does not wait. It reports false when the node has no --config-dir.
func (n *Node) RequestReload() bool {
	if n.config == nil {
		return false
	}
	select {
	case n.config.kick <- struct{}{}:
	default:
	}
	return true
}

// configFileOf is the --config-dir file that defines service/id, "" if none.
func (n *Node) configFileOf(service, id string) string {
	if n.config == nil {
		return ""
	}
	files := n.config.files.Load()
	if files == nil {
		return ""
	}
	return (*files)[registry.InstanceKey(service, id)]
}

// followConfig registers the --config-dir's instances, then reloads on
// every RequestReload and retries failed registrations, until ctx ends.
func (n *Node) followConfig(ctx context.Context) {
	c := n.config
	n.logReload(n.reloadConfig(ctx, true))
	retry := time.NewTimer(configRetry)
	defer retry.Stop()
	for {
		c.mu.Lock()
		pending := len(c.failed) > 0
		c.mu.Unlock()
		if !pending {
			retry.Stop()
		} else {
			retry.Reset(configRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			n.logReload(n.reloadConfig(ctx, true))
		case <-retry.C:
			n.reloadConfig(ctx, false)
		}
	}
}

// logReload logs what a reload found: one line, and one per bad file.
func (n *Node) logReload(r api.ReloadResponse) {
	if r.Error != "" {
		n.logger.Error("cannot read the service definitions", "dir", r.Dir, "err", r.Error)
		return
	}
	bad := 0
	for _, f := range r.Files {
		if f.Error != "" {
			bad++
			n.logger.Error("service definition not applied", "file", filepath.Join(r.Dir, f.File), "err", f.Error)
		}
	}
	n.logger.Info("service definitions read", "dir", r.Dir, "files", len(r.Files), "bad", bad, "registered", r.Registered, "deregistered", r.Deregistered)
}

// reloadConfig reads the --config-dir and makes the node's registrations
// match it. explicit (start, SIGHUP, the API) registers again what the
// files define and the node no longer holds; a retry only what failed.
func (n *Node) reloadConfig(ctx context.Context, explicit bool) api.ReloadResponse {
	c := n.config
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := api.ReloadResponse{Dir: c.dir, Files: []api.ConfigFile{}}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		resp.Error = err.Error()
		c.last.Store(&resp)
		return resp
	}
	type parsed struct {
		file string
		in   api.Instance
		err  error
	}
	var files []parsed
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		in, err := n.parseDefinition(filepath.Join(c.dir, name))
		if err == nil && n.isBuiltin(in.Service, in.ID) {
			err = fmt.Errorf("%s/%s is a built-in instance of this node (--services)", in.Service, in.ID)
		}
		files = append(files, parsed{name, in, err})
	}
	// An instance defined twice stays with the file that defined it
	// before; a new one goes to the first file by name.
	owner := map[string]string{}
	for _, p := range files {
		if k := registry.InstanceKey(p.in.Service, p.in.ID); p.err == nil && c.defs[k].file == p.file {
			owner[k] = p.file
		}
	}
	for _, p := range files {
		if k := registry.InstanceKey(p.in.Service, p.in.ID); p.err == nil && owner[k] == "" {
			owner[k] = p.file
		}
	}
	want := map[string]configDef{}
	fileIdx := map[string]int{} // file -> its entry in resp.Files
	for _, p := range files {
		f := api.ConfigFile{File: p.file}
		k := registry.InstanceKey(p.in.Service, p.in.ID)
		if p.err == nil && owner[k] != p.file {
			p.err = fmt.Errorf("%s/%s is defined in %s too", p.in.Service, p.in.ID, owner[k])
		}
		if p.err != nil {
			f.Error = p.err.Error()
			for k, d := range c.defs { // what an earlier read of the file registered stays
				if _, taken := owner[k]; d.file == p.file && !taken {
					want[k] = d
				}
			}
		} else {
			want[k] = configDef{file: p.file, in: p.in}
			f.Service, f.ID = p.in.Service, p.in.ID
		}
		fileIdx[p.file] = len(resp.Files)
		resp.Files = append(resp.Files, f)
	}
	// The API refuses changes to what the files define from now on, before
	// the registrations below.
	c.publishFiles(want)
	fail := func(file string, err error) {
		if i, ok := fileIdx[file]; ok {
			if resp.Files[i].Error == "" {
				resp.Files[i].Error = err.Error()
			}
			return
		}
		fileIdx[file] = len(resp.Files)
		resp.Files = append(resp.Files, api.ConfigFile{File: file, Error: err.Error()})
	}
	for k, d := range c.defs {
		if _, ok := want[k]; ok {
			continue
		}
		err := n.registrar.Deregister(ctx, d.in.Service, d.in.ID)
		switch {
		case err == nil:
			resp.Deregistered++
		case errors.Is(err, registry.ErrNotFound):
		default:
			want[k] = d // still registered: try again
			c.failed[k] = true
			fail(d.file, fmt.Errorf("the file is gone, but deregistering %s/%s failed (retrying): %w", d.in.Service, d.in.ID, err))
			continue
		}
		delete(c.failed, k)
	}
	for k, d := range want {
		old, had := c.defs[k]
		same := had && old.file == d.file && reflect.DeepEqual(old.in, d.in)
		if same && !c.failed[k] && (!explicit || n.registrar.Holds(d.in.Service, d.in.ID)) {
			continue
		}
		in := d.in.Clone() // prepareChecks changes its checks
		n.prepareChecks(&in)
		if err := n.registrar.Register(ctx, in); err != nil {
			c.failed[k] = true
			fail(d.file, fmt.Errorf("registering %s/%s failed (retrying): %w", d.in.Service, d.in.ID, err))
			continue
		}
		delete(c.failed, k)
		resp.Registered++
	}
	c.defs = want
	c.publishFiles(want)
	c.last.Store(&resp)
	return resp
}

// publishFiles makes want the instances the API may not change.
func (c *configState) publishFiles(want map[string]configDef) {
	byKey := make(map[string]string, len(want))
	for k, d := range want {
		byKey[k] = d.file
	}
	c.files.Store(&byKey)
}

// parseDefinition reads one service definition file. Errors name the
// field, as the API's 400s do.
func (n *Node) parseDefinition(path string) (api.Instance, error) {
	// A FIFO or a device would block the read (and every reload after it).
	if st, err := os.Stat(path); err != nil {
		return api.Instance{}, err
	} else if !st.Mode().IsRegular() {
		return api.Instance{}, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return api.Instance{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDefinitionBytes+1))
	if err != nil {
		return api.Instance{}, err
	}
	if len(b) > maxDefinitionBytes {
		return api.Instance{}, fmt.Errorf("the file is over %d bytes", maxDefinitionBytes)
	}
	var def api.ServiceDefinition
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&def); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) && typ.Field != "" {
			return api.Instance{}, fmt.Errorf("%s: want %s, got %s", typ.Field, typ.Type, typ.Value)
		}
		return api.Instance{}, fmt.Errorf("not a service definition (a JSON object with name, port and the fields of a registration): %w", err)
	}
	if dec.More() {
		return api.Instance{}, errors.New("the file holds more than one JSON value")
	}
	if err := api.ValidateName("name", def.Name); err != nil {
		return api.Instance{}, err
	}
	if def.ID == "" {
		def.ID = n.cfg.Name
	}
	if err := api.ValidateName("id", def.ID); err != nil {
		return api.Instance{}, err
	}
	if def.Address == "" {
		def.Address = n.cfg.advertise()
	}
	if def.Path == "/" {
		def.Path = ""
	}
	in := api.Instance{
		ID: def.ID, Service: def.Name, Node: n.cfg.Name, Address: def.Address, Port: def.Port, Path: def.Path,
		Tags: def.Tags, Meta: def.Meta, Weight: def.Weight, Checks: def.Checks,
	}
	in.Normalize()
	if err := in.Validate(); err != nil {
		return in, err
	}
	return in, nil
}

// reload answers POST /v1/reload: the --config-dir read again, file by file.
func (s *apiServer) reload(w http.ResponseWriter, r *http.Request) {
	if !s.running(w) {
		return
	}
	if s.n.config == nil {
		writeJSON(w, http.StatusConflict, api.Error{Error: errNoConfigDir.Error() + " (start it with --config-dir DIR)", Reason: "no_config_dir"})
		return
	}
	resp := s.n.reloadConfig(r.Context(), true)
	s.n.logReload(resp)
	s.audit(r, actReload, s.n.cfg.ConfigDir)
	writeJSON(w, http.StatusOK, resp)
}
