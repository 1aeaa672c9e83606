package api

import "time"

// Gossip status of a node, as memberlist sees it.
const (
	StatusAlive   = "alive"
	StatusSuspect = "suspect"
	StatusDead    = "dead"
	StatusLeft    = "left"
)

// Registry role of a node.
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
	// RoleSpare: a full node without a registry member; it uses the
	// voters' and can be promoted.
	RoleSpare = "spare"
	// RoleNone: not in the registry and not (yet) a spare, e.g. a node
	// still forming a cluster.
	RoleNone = "none"
)

// Member is one node of the cluster as GET /v1/members reports it.
type Member struct {
	Name string `json:"name"`
	// ID is the node's identity, kept in its data dir.
	ID          string `json:"id,omitempty"`
	Address     string `json:"address"`
	GossipPort  int    `json:"gossip_port"`
	GatewayPort int    `json:"gateway_port,omitempty"`
	APIPort     int    `json:"api_port,omitempty"`
	ServicePort int    `json:"service_port,omitempty"`
	ClientURL   string `json:"client_url,omitempty"`
	PeerURL     string `json:"peer_url,omitempty"`
	// Status is the gossip status: alive, suspect, dead or left.
	Status string `json:"status"`
	// Role is the registry role: voter, learner, spare or none.
	Role string `json:"role"`
	// Leader is true for the node whose member leads the registry's Raft group.
	Leader bool `json:"leader"`
	// MemberID is the etcd member ID in hex, when the node has one.
	MemberID string `json:"member_id,omitempty"`
	Version  string `json:"version,omitempty"`
	// Maintenance says what of the node is in maintenance: "node", its
	// services' names, or their count; "" when nothing is.
	Maintenance string `json:"maintenance,omitempty"`
}

// MembersResponse is the body of GET /v1/members.
type MembersResponse struct {
	// Members are sorted by name. Registry members not known to gossip are
	// listed too, with status "unknown".
	Members []Member `json:"members"`
	// Leader is the name of the registry leader, "" when there is none.
	Leader string `json:"leader"`
	// Error says why registry roles could not be read, when they could not.
	Error string `json:"error,omitempty"`
	// Alarms are the registry's active alarms (e.g. "NOSPACE on member
	// 8e9e05c52164694d"); an operator must act on any of them.
	Alarms []string `json:"alarms,omitempty"`
}

// ServiceSummary is one entry of GET /v1/services.
type ServiceSummary struct {
	Name      string `json:"name"`
	Instances int    `json:"instances"`
}

// ServicesResponse is the body of GET /v1/services.
type ServicesResponse struct {
	Services []ServiceSummary `json:"services"`
	// Revision is the registry revision the catalog reflects.
	Revision int64 `json:"revision"`
}

// ServiceResponse is the body of GET /v1/services/{name}.
type ServiceResponse struct {
	Name      string     `json:"name"`
	Instances []Instance `json:"instances"`
	Revision  int64      `json:"revision"`
}

// InstanceResponse answers GET /v1/services/{name}/instances/{id}.
type InstanceResponse struct {
	Instance Instance `json:"instance"`
	Revision int64    `json:"revision"`
}

// Error is the body of every error answer of the agent API and the gateway.
type Error struct {
	Error string `json:"error"`
	// Field names the request field that was rejected, for 400s.
	Field string `json:"field,omitempty"`
	// Reason is a short machine-readable cause.
	Reason string `json:"reason,omitempty"`
	// Policy names the policy the request needs, on a 403 of the agent
	// API's access control.
	Policy string `json:"policy,omitempty"`
	// RequestID is the gateway's X-Request-Id of the request, which its
	// log lines carry too.
	RequestID string `json:"request_id,omitempty"`
}

// Readiness is the body of GET /readyz.
type Readiness struct {
	Status string `json:"status"` // "ready", "degraded" or "starting"/"stopping"
	Reason string `json:"reason,omitempty"`
}

// TokenResponse carries a join token (POST /v1/token/rotate). It is a
// secret: only a client with a cluster certificate receives one.
type TokenResponse struct {
	Token string `json:"token"`
}

// KeyringRequest changes the cluster's gossip keyring (POST /v1/keyring):
// Op is install, use or remove, Key a 32-byte key in standard base64.
type KeyringRequest struct {
	Op  string `json:"op"`
	Key string `json:"key"`
}

// KeyringResponse describes a gossip keyring by key IDs (the first 8 bytes
// of each key's SHA-256, in hex), never by the keys themselves.
type KeyringResponse struct {
	// Primary is the ID of the key messages are encrypted with.
	Primary string `json:"primary"`
	// Keys are the IDs of every key that decrypts.
	Keys []string `json:"keys"`
	// Local is this node's own keyring, which follows the registry's.
	Local *KeyringResponse `json:"local,omitempty"`
}

// ACLToken is an API token as the agent API shows it. Secret is set only
// in the answer that created the token: the registry keeps its hash.
type ACLToken struct {
	Name      string    `json:"name"`
	Policies  []string  `json:"policies"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is absent for a token that never expires.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Expired   bool      `json:"expired,omitempty"`
	CreatedBy string    `json:"created_by,omitempty"`
	Secret    string    `json:"secret,omitempty"`
}

// ACLTokenRequest is the body of POST /v1/acl/tokens.
type ACLTokenRequest struct {
	Name     string   `json:"name"`
	Policies []string `json:"policies"`
	// TTL is a Go duration ("24h", "90m"); empty: the token never expires.
	TTL string `json:"ttl,omitempty"`
}

// ACLTokensResponse is the body of GET /v1/acl/tokens, sorted by name.
type ACLTokensResponse struct {
	Tokens []ACLToken `json:"tokens"`
}

// ACLBootstrapRequest is the body of POST /v1/acl/bootstrap. Reset
// replaces the management token (the old one stops working at once);
// without it the request succeeds only on a cluster never bootstrapped.
type ACLBootstrapRequest struct {
	Reset bool `json:"reset,omitempty"`
}

// WhoAmI is the body of GET /v1/acl/whoami: who the API takes the caller
// for.
type WhoAmI struct {
	// Name is the token's name, "cert:<name>" for a cluster certificate,
	// or "anonymous".
	Name     string    `json:"name"`
	Kind     string    `json:"kind"` // token, node-certificate, client-certificate, anonymous
	Policies []string  `json:"policies"`
	Expires  time.Time `json:"expires_at,omitzero"`
}
