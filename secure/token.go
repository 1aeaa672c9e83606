package secure

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// TokenPrefix starts every join token of this format's version 1.
const TokenPrefix = "herd1."

// SecretSize is the size of a join secret in bytes.
const SecretSize = 32

// Token errors.
var (
	// ErrBadToken: the string is not a herd join token.
	ErrBadToken = errors.New("not a herd join token")
	// ErrTokenVersion: a herd token of a format this build does not read.
	ErrTokenVersion = errors.New("join token of an unknown format version")
)

// Secret is a cluster join secret.
type Secret [SecretSize]byte

// NewSecret returns a random secret.
func NewSecret() (Secret, error) {
	var s Secret
	if _, err := rand.Read(s[:]); err != nil {
		return s, fmt.Errorf("join secret: %w", err)
	}
	return s, nil
}

// Equal compares in constant time.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s[:], o[:]) == 1 }

// CAHash is the SHA-256 of a CA certificate's DER bytes.
type CAHash [sha256.Size]byte

// String is "sha256:<hex>", the form errors and logs use.
func (h CAHash) String() string { return "sha256:" + hex.EncodeToString(h[:]) }

// Token is a join token: the cluster's join secret and, once the cluster
// exists, the hash of its CA certificate.
type Token struct {
	// CA pins the cluster CA; the zero value (a token made with `herd token
	// generate` before any CA existed) pins none.
	CA CAHash
	// Secret is the join secret.
	Secret Secret
}

// Pinned reports whether the token pins a CA.
func (t Token) Pinned() bool { return t.CA != CAHash{} }

// String is the token's text: herd1.<ca-hex>.<secret-hex>, or
// herd1.<secret-hex> when it pins no CA. It holds the secret: never log it.
func (t Token) String() string {
	if !t.Pinned() {
		return TokenPrefix + hex.EncodeToString(t.Secret[:])
	}
	return TokenPrefix + hex.EncodeToString(t.CA[:]) + "." + hex.EncodeToString(t.Secret[:])
}

// ParseToken reads a join token. Surrounding white space is ignored (a
// token read from a file ends with a newline). Errors never quote the
// token: it is a secret.
func ParseToken(s string) (Token, error) {
	var t Token
	s = strings.TrimSpace(s)
	if s == "" {
		return t, fmt.Errorf("%w: it is empty", ErrBadToken)
	}
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		if v, _, found := strings.Cut(s, "."); found && strings.HasPrefix(v, "herd") && len(v) > 4 {
			return t, fmt.Errorf("%w %q (this build reads %q)", ErrTokenVersion, v, strings.TrimSuffix(TokenPrefix, "."))
		}
		return t, fmt.Errorf("%w: it does not start with %q", ErrBadToken, TokenPrefix)
	}
	parts := strings.Split(rest, ".")
	var secretHex string
	switch len(parts) {
	case 1:
		secretHex = parts[0]
	case 2:
		if err := decodeHex(parts[0], t.CA[:]); err != nil {
			return Token{}, fmt.Errorf("%w: its CA hash %v", ErrBadToken, err)
		}
		if !t.Pinned() {
			return Token{}, fmt.Errorf("%w: its CA hash is all zeros", ErrBadToken)
		}
		secretHex = parts[1]
	default:
		return Token{}, fmt.Errorf("%w: it has %d dot-separated parts, want %q or %q", ErrBadToken, len(parts)+1, "herd1.<ca>.<secret>", "herd1.<secret>")
	}
	if err := decodeHex(secretHex, t.Secret[:]); err != nil {
		return Token{}, fmt.Errorf("%w: its secret %v", ErrBadToken, err)
	}
	return t, nil
}

// decodeHex decodes exactly len(dst) bytes of lower- or upper-case hex.
func decodeHex(s string, dst []byte) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("is %d characters long, want %d hex digits", len(s), 2*len(dst))
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return errors.New("is not hex")
	}
	return nil
}
