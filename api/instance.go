package api

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
)

// Instance is one registered endpoint of a service, stored in the registry at
// /herd/services/<service>/<id> under the lease of the node that owns it.
type Instance struct {
	// ID is unique within the service (a DNS label).
	ID string `json:"id"`
	// Service is the service name (a DNS label).
	Service string `json:"service"`
	// Node is the name of the herd node whose lease holds the instance.
	Node string `json:"node"`
	// Address is the IP peers' gateways dial.
	Address string `json:"address"`
	// Port is the TCP port on Address, 1-65535.
	Port int `json:"port"`
	// Path is prepended to the request path when proxying ("" or "/x/y").
	Path string `json:"path,omitempty"`
	// Tags are free-form labels.
	Tags []string `json:"tags,omitempty"`
	// Meta is free-form key/value metadata.
	Meta map[string]string `json:"meta,omitempty"`
	// Weight is the relative share of traffic, 1-1000; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// Checks are the instance's health checks, run by its node; in the
	// registry each carries its current status.
	Checks []Check `json:"checks,omitempty"`
	// Health is the worst status of the checks (passing without any): the
	// node sets it, from the checks.
	Health string `json:"health,omitempty"`
	// Maintenance, when set, is why the instance is in maintenance: no
	// gateway sends it new requests, whatever its checks say.
	Maintenance string `json:"maintenance,omitempty"`
	// TLS says the instance serves HTTPS with a certificate the cluster CA
	// issued for Address and wants a cluster client certificate: gateways
	// dial it with TLS and their node certificate. A node's service host
	// sets it under --internal-tls; the agent API's registrations cannot.
	TLS bool `json:"tls,omitempty"`
}

// Clone returns a copy of in whose slices and map can be changed without
// changing in's.
func (in Instance) Clone() Instance {
	in.Checks, in.Tags, in.Meta = slices.Clone(in.Checks), slices.Clone(in.Tags), maps.Clone(in.Meta)
	return in
}

// Limits on instance fields. They keep a registry value well under etcd's
// request size limit and stop one registration from bloating every catalog.
const (
	MaxWeight     = 1000
	MaxTags       = 64
	MaxTagLen     = 256
	MaxMetaPairs  = 64
	MaxMetaKeyLen = 128
	MaxMetaValLen = 512
	MaxPathLen    = 1024
)

// HealthPassing is the health of an instance that is serving.
const HealthPassing = "passing"

// ErrInvalid is wrapped by every validation error; FieldError says which
// field was wrong.
var ErrInvalid = errors.New("invalid")

// FieldError names the field of a request that was rejected and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Unwrap makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// ValidName reports whether s is a DNS label: lower-case letters, digits and
// '-', 1-63 characters, not starting or ending with '-'. Service names,
// instance IDs and node names are all DNS labels. (The gateway checks every
// request's service name with it: no regular expression.)
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateName returns a FieldError naming field when s is not a DNS label.
func ValidateName(field, s string) error {
	if !ValidName(s) {
		return &FieldError{Field: field, Reason: fmt.Sprintf("%q is not a DNS label (lower-case letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)", s)}
	}
	return nil
}

// Validate checks every field of the instance and returns the first problem
// as a *FieldError. It does not fill defaults; see Normalize.
func (in *Instance) Validate() error {
	if err := ValidateName("service", in.Service); err != nil {
		return err
	}
	if err := ValidateName("id", in.ID); err != nil {
		return err
	}
	if in.Node != "" {
		if err := ValidateName("node", in.Node); err != nil {
			return err
		}
	}
	ip := net.ParseIP(in.Address)
	if ip == nil {
		return &FieldError{Field: "address", Reason: fmt.Sprintf("%q is not an IP address", in.Address)}
	}
	if ip.IsUnspecified() || ip.IsMulticast() || ip.Equal(net.IPv4bcast) {
		return &FieldError{Field: "address", Reason: fmt.Sprintf("%s cannot be dialled", in.Address)}
	}
	if in.Port < 1 || in.Port > 65535 {
		return &FieldError{Field: "port", Reason: fmt.Sprintf("%d is not in 1-65535", in.Port)}
	}
	if in.Path != "" {
		if !strings.HasPrefix(in.Path, "/") || strings.HasSuffix(in.Path, "/") {
			return &FieldError{Field: "path", Reason: fmt.Sprintf("%q must start with '/' and not end with '/' (the root is \"/\" or none)", in.Path)}
		}
		if len(in.Path) > MaxPathLen || strings.ContainsAny(in.Path, "?#%\\ \t\r\n") {
			return &FieldError{Field: "path", Reason: fmt.Sprintf("%q must be a plain path of at most %d bytes without '?', '#', '%%', '\\' or spaces", in.Path, MaxPathLen)}
		}
		for seg := range strings.SplitSeq(in.Path[1:], "/") {
			if seg == "" || seg == "." || seg == ".." || strings.HasPrefix(seg, "..;") {
				return &FieldError{Field: "path", Reason: fmt.Sprintf("%q has an empty, '.' or '..' segment", in.Path)}
			}
		}
	}
	if in.Weight < 0 || in.Weight > MaxWeight {
		return &FieldError{Field: "weight", Reason: fmt.Sprintf("%d is not in 0-%d", in.Weight, MaxWeight)}
	}
	if len(in.Tags) > MaxTags {
		return &FieldError{Field: "tags", Reason: fmt.Sprintf("%d tags, at most %d allowed", len(in.Tags), MaxTags)}
	}
	for _, t := range in.Tags {
		if t == "" || len(t) > MaxTagLen {
			return &FieldError{Field: "tags", Reason: fmt.Sprintf("each tag must be 1-%d bytes", MaxTagLen)}
		}
	}
	if len(in.Meta) > MaxMetaPairs {
		return &FieldError{Field: "meta", Reason: fmt.Sprintf("%d keys, at most %d allowed", len(in.Meta), MaxMetaPairs)}
	}
	for k, v := range in.Meta {
		if k == "" || len(k) > MaxMetaKeyLen || len(v) > MaxMetaValLen {
			return &FieldError{Field: "meta", Reason: fmt.Sprintf("keys must be 1-%d bytes and values at most %d bytes", MaxMetaKeyLen, MaxMetaValLen)}
		}
	}
	if len(in.Maintenance) > MaxNoteLen {
		return &FieldError{Field: "maintenance", Reason: fmt.Sprintf("the reason is over %d bytes", MaxNoteLen)}
	}
	return ValidateChecks(in.Checks)
}

// Normalize fills defaults (weight 1, every check's) and sets Health from
// the checks.
func (in *Instance) Normalize() {
	if in.Weight == 0 {
		in.Weight = 1
	}
	NormalizeChecks(in.Checks)
	in.Health = AggregateHealth(in.Checks)
}

// RegisterRequest is the body of PUT /v1/services/{name}/instances/{id}.
// Unknown fields are rejected.
type RegisterRequest struct {
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Path    string            `json:"path,omitempty"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	Weight  int               `json:"weight,omitempty"`
	// Checks are the instance's health checks (see Check): with any, the
	// instance gets traffic only once they pass, unless a check declares
	// another initial status.
	Checks []Check `json:"checks,omitempty"`
}

// BatchRequest is the body of POST /v1/instances: registrations and
// deregistrations of one node's instances made together, all or nothing,
// at most 128 in all.
type BatchRequest struct {
	Register   []BatchRegistration `json:"register,omitempty"`
	Deregister []InstanceRef       `json:"deregister,omitempty"`
}

// BatchRegistration is one instance of a BatchRequest: its name and what a
// PUT of it would carry.
type BatchRegistration struct {
	Service string `json:"service"`
	ID      string `json:"id"`
	RegisterRequest
}

// InstanceRef names an instance.
type InstanceRef struct {
	Service string `json:"service"`
	ID      string `json:"id"`
}

// BatchResponse is the answer to a BatchRequest that was applied.
type BatchResponse struct {
	Registered   int `json:"registered"`
	Deregistered int `json:"deregistered"`
}

// ServiceDefinition is a file of a node's --config-dir: one instance of a
// service, registered by the node at start and on every reload, with the
// fields of a registration.
type ServiceDefinition struct {
	// Name is the service's name (a DNS label).
	Name string `json:"name"`
	// ID is the instance's ID; default: the node's name.
	ID string `json:"id,omitempty"`
	// Address defaults to the node's advertised address.
	RegisterRequest
}

// ReloadResponse is the answer of POST /v1/reload: what the node's
// --config-dir holds now, file by file.
type ReloadResponse struct {
	Dir string `json:"dir"`
	// Error says why the directory could not be read (nothing changed).
	Error string       `json:"error,omitempty"`
	Files []ConfigFile `json:"files"`
	// Registered counts the instances added or changed by this reload,
	// Deregistered those removed.
	Registered   int `json:"registered"`
	Deregistered int `json:"deregistered"`
}

// ConfigFile is one file of a --config-dir and what became of it.
type ConfigFile struct {
	File    string `json:"file"`
	Service string `json:"service,omitempty"`
	ID      string `json:"id,omitempty"`
	// Error says what is wrong with the file; its instance, if an earlier
	// read registered it, stays as it was.
	Error string `json:"error,omitempty"`
}
