package api

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxMaintReason is the longest maintenance reason, in bytes.
const MaxMaintReason = 256

// DefaultMaintReason is the reason of a maintenance enabled without one.
const DefaultMaintReason = "in maintenance (no reason given)"

// Maintenance is a node's maintenance state (GET /v1/maintenance): the
// node as a whole, or some of its services. Its instances in maintenance
// get no new requests from any gateway; in-flight requests finish and the
// registrations stay.
type Maintenance struct {
	// Node is the node's own maintenance (all its instances), nil when off.
	Node *MaintEntry `json:"node,omitempty"`
	// Services holds the maintenance of this node's instances of a service,
	// by service name.
	Services map[string]MaintEntry `json:"services,omitempty"`
}

// MaintEntry is one maintenance: why, since when, and who enabled it.
type MaintEntry struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// By names the token (or "node-certificate" and the like) that enabled
	// it: never a secret.
	By string `json:"by,omitempty"`
}

// MaintenanceRequest is the optional body of PUT /v1/maintenance.
type MaintenanceRequest struct {
	Reason string `json:"reason,omitempty"`
}

// ReasonOf is the maintenance reason of this node's instances of service,
// "" when they are not in maintenance: the node's own reason first.
func (m *Maintenance) ReasonOf(service string) string {
	if m.Node != nil {
		return m.Node.Reason
	}
	return m.Services[service].Reason
}

// Summary says in a few bytes what is in maintenance ("" when nothing is):
// "node", or the services' names while they fit in max bytes, else their
// count.
func (m *Maintenance) Summary(max int) string {
	if m.Node != nil {
		return "node"
	}
	if len(m.Services) == 0 {
		return ""
	}
	names := make([]string, 0, len(m.Services))
	for s := range m.Services {
		names = append(names, s)
	}
	slices.Sort(names)
	s := strings.Join(names, ",")
	if len(s) > max {
		return fmt.Sprintf("%d services", len(names))
	}
	return s
}

// ValidateMaintReason checks a maintenance reason: printable UTF-8 of at
// most MaxMaintReason bytes (it is shown in tables and logs).
func ValidateMaintReason(s string) error {
	if len(s) > MaxMaintReason {
		return &FieldError{Field: "reason", Reason: fmt.Sprintf("the reason is %d bytes, over %d", len(s), MaxMaintReason)}
	}
	if !utf8.ValidString(s) {
		return &FieldError{Field: "reason", Reason: "the reason is not valid UTF-8"}
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return &FieldError{Field: "reason", Reason: fmt.Sprintf("the reason holds the control character %U", r)}
		}
	}
	return nil
}
