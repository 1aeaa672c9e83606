package acl

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy names.
const (
	PolicyRead     = "read"
	PolicyOperator = "operator"
	// PolicyServicePrefix starts a service policy: service:<prefix>.
	PolicyServicePrefix = "service:"
)

// MaxPolicies bounds the policies of one token.
const MaxPolicies = 16

// ValidatePolicy checks one policy's text. Errors name what is wrong.
func ValidatePolicy(p string) error {
	switch {
	case p == PolicyRead, p == PolicyOperator:
		return nil
	case strings.HasPrefix(p, PolicyServicePrefix):
		prefix := strings.TrimPrefix(p, PolicyServicePrefix)
		if prefix == "" {
			return fmt.Errorf("policy %q names no service prefix (service:<prefix>, e.g. service:web)", p)
		}
		if len(prefix) > 63 || strings.IndexFunc(prefix, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-')
		}) >= 0 {
			return fmt.Errorf("policy %q: a service prefix is at most 63 of a-z, 0-9 and '-'", p)
		}
		return nil
	default:
		return fmt.Errorf("unknown policy %q (want read, service:<prefix> or operator)", p)
	}
}

// ValidatePolicies checks a token's policy list.
func ValidatePolicies(ps []string) error {
	if len(ps) == 0 {
		return errors.New("a token needs at least one policy (read, service:<prefix> or operator)")
	}
	if len(ps) > MaxPolicies {
		return fmt.Errorf("a token has at most %d policies, got %d", MaxPolicies, len(ps))
	}
	for _, p := range ps {
		if err := ValidatePolicy(p); err != nil {
			return err
		}
	}
	return nil
}

// Need is what a request needs from its caller's policies.
type Need struct {
	kind    needKind
	service string
}

type needKind uint8

const (
	needAuthenticated needKind = iota // any valid identity, whatever its policies
	needRead
	needService
	needOperator
)

// What requests need.
var (
	// NeedAuthenticated: any valid token or certificate (e.g. whoami).
	NeedAuthenticated = Need{kind: needAuthenticated}
	NeedRead          = Need{kind: needRead}
	NeedOperator      = Need{kind: needOperator}
)

// NeedService is what changing service's instances needs.
func NeedService(service string) Need { return Need{kind: needService, service: service} }

// IsRead reports whether the need is satisfied by the read policy (what
// anonymous callers get with --anonymous-read).
func (n Need) IsRead() bool { return n.kind == needRead }

// String names the policy that would satisfy the need, as a 403 says it.
func (n Need) String() string {
	switch n.kind {
	case needRead:
		return PolicyRead
	case needService:
		return PolicyServicePrefix + n.service
	case needOperator:
		return PolicyOperator
	}
	return "a valid token"
}

// Explain says which policies satisfy the need, for a 403.
func (n Need) Explain() string {
	switch n.kind {
	case needRead:
		return "policy read (or any service:<prefix>, or operator)"
	case needService:
		return fmt.Sprintf("policy service:%s (or service:<prefix> with a prefix of %q, or operator)", n.service, n.service)
	case needOperator:
		return "policy operator"
	}
	return "a valid token"
}

// Allows reports whether policies satisfy need.
func Allows(policies []string, need Need) bool {
	if slices.Contains(policies, PolicyOperator) {
		return true
	}
	switch need.kind {
	case needAuthenticated:
		return true
	case needRead:
		return slices.ContainsFunc(policies, func(p string) bool {
			return p == PolicyRead || strings.HasPrefix(p, PolicyServicePrefix)
		})
	case needService:
		return slices.ContainsFunc(policies, func(p string) bool {
			prefix, ok := strings.CutPrefix(p, PolicyServicePrefix)
			return ok && prefix != "" && strings.HasPrefix(need.service, prefix)
		})
	}
	return false
}

// SecretPrefix starts every API token's secret.
const SecretPrefix = "herd-acl1."

const secretBytes = 32

// NewSecret returns a new random secret.
func NewSecret() (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	return SecretPrefix + hex.EncodeToString(b), nil
}

// Secret errors. They never quote the secret.
var (
	ErrNotAToken = errors.New("not a herd API token (herd-acl1.<64 hex digits>)")
	// ErrJoinToken: the cluster's join token was given as an API token.
	ErrJoinToken = errors.New("that is the cluster's join token (herd1....), not an API token (herd-acl1....)")
)

// CheckSecret checks a secret's form (surrounding white space ignored)
// and returns it trimmed.
func CheckSecret(s string) (string, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		if strings.HasPrefix(s, "herd1.") {
			return "", ErrJoinToken
		}
		return "", ErrNotAToken
	}
	if len(rest) != 2*secretBytes || strings.IndexFunc(rest, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f')
	}) >= 0 {
		return "", ErrNotAToken
	}
	return s, nil
}

// Hash is the registry's form of a secret: the hex SHA-256 of its text.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// Token is a token as the registry keeps it: everything but the secret.
type Token struct {
	Name      string    `json:"name"`
	Policies  []string  `json:"policies"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// CreatedBy names who made it (a token's name, a certificate's).
	CreatedBy string `json:"created_by,omitempty"`
}

// Expired reports whether the token has expired at now.
func (t *Token) Expired(now time.Time) bool { return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) }

// Set is an immutable set of tokens, looked up by secret.
type Set struct {
	byHash map[[sha256.Size]byte]*Token
	rev    int64
}

// NewSet indexes tokens, as of registry revision rev. A token whose hash
// is not hex SHA-256 is left out.
func NewSet(tokens []*Token, rev int64) *Set {
	s := &Set{byHash: make(map[[sha256.Size]byte]*Token, len(tokens)), rev: rev}
	for _, t := range tokens {
		var h [sha256.Size]byte
		if b, err := hex.DecodeString(t.Hash); err == nil && len(b) == len(h) {
			copy(h[:], b)
			s.byHash[h] = t
		}
	}
	return s
}

// Lookup returns the token whose secret is secret, nil when none is.
func (s *Set) Lookup(secret string) *Token {
	if s == nil {
		return nil
	}
	return s.byHash[sha256.Sum256([]byte(secret))]
}

// Len is the number of tokens.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byHash)
}

// Revision is the registry revision the set reflects.
func (s *Set) Revision() int64 {
	if s == nil {
		return 0
	}
	return s.rev
}
