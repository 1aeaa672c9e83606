package secure

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Files is the part of a node's data dir that holds its identity. Every
// file is written 0600 (the directory 0700), atomically and synced:
//
//	tls/ca.pem         the cluster CA certificate (every node)
//	tls/ca-key.pem     the CA key (the node that created the cluster)
//	tls/node.pem       this node's certificate
//	tls/node-key.pem   its key, made on this node and never sent anywhere
//	join-token         the join token, kept current by the node
//	gossip-keyring.json the gossip keyring, kept current by the node
//	acl-token          the management token (agent API), on the node that
//	                   created the cluster or last reset it
type Files struct{ Dir string }

// Paths of the identity files.
func (f Files) tlsDir() string       { return filepath.Join(f.Dir, "tls") }
func (f Files) CAFile() string       { return filepath.Join(f.tlsDir(), "ca.pem") }
func (f Files) CAKeyFile() string    { return filepath.Join(f.tlsDir(), "ca-key.pem") }
func (f Files) CertFile() string     { return filepath.Join(f.tlsDir(), "node.pem") }
func (f Files) KeyFile() string      { return filepath.Join(f.tlsDir(), "node-key.pem") }
func (f Files) TokenFile() string    { return filepath.Join(f.Dir, "join-token") }
func (f Files) KeyringFile() string  { return filepath.Join(f.Dir, "gossip-keyring.json") }
func (f Files) ACLTokenFile() string { return filepath.Join(f.Dir, "acl-token") }

// HasIdentity reports whether the data dir holds a CA certificate and a
// node certificate: the node belongs to a secured cluster.
func (f Files) HasIdentity() bool {
	return exists(f.CAFile()) && exists(f.CertFile()) && exists(f.KeyFile())
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// WriteSecretFile writes b to path with mode 0600 through a synced
// temporary file and a rename, and syncs the directory: a crash leaves the
// old content or the new, never a part.
func WriteSecretFile(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	cleanup := func() { tmp.Close(); os.Remove(tmp.Name()) }
	if err := tmp.Chmod(0o600); err != nil {
		cleanup()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		cleanup()
		return err
	}
	if err := tmp.Sync(); err != nil {
		cleanup()
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// SaveCA writes the CA certificate, and its key when the CA holds one and
// withKey is set.
func (f Files) SaveCA(ca *CA, withKey bool) error {
	if err := WriteSecretFile(f.CAFile(), ca.CertPEM()); err != nil {
		return fmt.Errorf("write %s: %w", f.CAFile(), err)
	}
	if withKey && ca.Key != nil {
		k, err := KeyPEM(ca.Key)
		if err != nil {
			return err
		}
		if err := WriteSecretFile(f.CAKeyFile(), k); err != nil {
			return fmt.Errorf("write %s: %w", f.CAKeyFile(), err)
		}
	}
	return nil
}

// LoadCA reads the CA certificate and, if the node holds it, its key.
func (f Files) LoadCA() (*CA, error) {
	b, err := os.ReadFile(f.CAFile())
	if err != nil {
		return nil, fmt.Errorf("read the cluster CA: %w", err)
	}
	cert, err := ParseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.CAFile(), err)
	}
	ca := &CA{Cert: cert}
	kb, err := os.ReadFile(f.CAKeyFile())
	switch {
	case errors.Is(err, os.ErrNotExist):
		return ca, nil
	case err != nil:
		return nil, fmt.Errorf("read the CA key: %w", err)
	}
	if ca.Key, err = ParseKeyPEM(kb); err != nil {
		return nil, fmt.Errorf("%s: %w", f.CAKeyFile(), err)
	}
	return ca, nil
}

// SaveNodeCert writes the node's certificate and key (PEM).
func (f Files) SaveNodeCert(certPEM, keyPEM []byte) error {
	// The key first: a certificate without its key is useless, a key
	// without its certificate is only an unfinished renewal.
	if err := WriteSecretFile(f.KeyFile(), keyPEM); err != nil {
		return fmt.Errorf("write %s: %w", f.KeyFile(), err)
	}
	if err := WriteSecretFile(f.CertFile(), certPEM); err != nil {
		return fmt.Errorf("write %s: %w", f.CertFile(), err)
	}
	return nil
}

// LoadNodeCert reads the node's certificate and key.
func (f Files) LoadNodeCert() (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(f.CertFile(), f.KeyFile())
	if err != nil {
		return c, fmt.Errorf("read the node certificate: %w", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return c, err
		}
	}
	return c, nil
}

// SaveToken writes the join token file.
func (f Files) SaveToken(t Token) error {
	if err := WriteSecretFile(f.TokenFile(), []byte(t.String()+"\n")); err != nil {
		return fmt.Errorf("write %s: %w", f.TokenFile(), err)
	}
	return nil
}

// SaveACLToken writes the management token file.
func (f Files) SaveACLToken(secret string) error {
	if err := WriteSecretFile(f.ACLTokenFile(), []byte(secret+"\n")); err != nil {
		return fmt.Errorf("write %s: %w", f.ACLTokenFile(), err)
	}
	return nil
}

// LoadToken reads the join token file.
func (f Files) LoadToken() (Token, error) {
	b, err := os.ReadFile(f.TokenFile())
	if err != nil {
		return Token{}, fmt.Errorf("read the join token: %w", err)
	}
	t, err := ParseToken(string(b))
	if err != nil {
		return Token{}, fmt.Errorf("%s: %w", f.TokenFile(), err)
	}
	return t, nil
}

// Keyring is the gossip keyring: AES-256 keys, one of them the primary
// that encrypts what the node sends; every key decrypts.
type Keyring struct {
	Primary []byte
	Keys    [][]byte
}

// GossipKeySize is the size of a gossip key (AES-256).
const GossipKeySize = 32

// MaxGossipKeys bounds the keyring (a rotation needs two or three).
const MaxGossipKeys = 16

// Validate checks sizes and that the primary is one of the keys.
func (k Keyring) Validate() error {
	if len(k.Keys) == 0 || len(k.Keys) > MaxGossipKeys {
		return fmt.Errorf("gossip keyring has %d keys, want 1-%d", len(k.Keys), MaxGossipKeys)
	}
	primary := false
	for i, key := range k.Keys {
		if len(key) != GossipKeySize {
			return fmt.Errorf("gossip key %d is %d bytes, want %d", i+1, len(key), GossipKeySize)
		}
		if string(key) == string(k.Primary) {
			primary = true
		}
	}
	if !primary {
		return errors.New("gossip keyring's primary key is not one of its keys")
	}
	return nil
}

type keyringJSON struct {
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"`
}

// MarshalJSON encodes keys in standard base64 (Consul's format).
func (k Keyring) MarshalJSON() ([]byte, error) {
	j := keyringJSON{Primary: EncodeGossipKey(k.Primary)}
	for _, key := range k.Keys {
		j.Keys = append(j.Keys, EncodeGossipKey(key))
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes and validates.
func (k *Keyring) UnmarshalJSON(b []byte) error {
	var j keyringJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var out Keyring
	var err error
	if out.Primary, err = DecodeGossipKey(j.Primary); err != nil {
		return fmt.Errorf("primary: %w", err)
	}
	for i, s := range j.Keys {
		key, err := DecodeGossipKey(s)
		if err != nil {
			return fmt.Errorf("key %d: %w", i+1, err)
		}
		out.Keys = append(out.Keys, key)
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*k = out
	return nil
}

// EncodeGossipKey is a key's text form (standard base64).
func EncodeGossipKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodeGossipKey reads a key's text form; it never quotes the input.
func DecodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("gossip key is not standard base64")
	}
	if len(k) != GossipKeySize {
		return nil, fmt.Errorf("gossip key is %d bytes, want %d (32 random bytes, base64)", len(k), GossipKeySize)
	}
	return k, nil
}

// SaveKeyring writes the keyring file.
func (f Files) SaveKeyring(k Keyring) error {
	b, err := json.Marshal(k)
	if err != nil {
		return err
	}
	if err := WriteSecretFile(f.KeyringFile(), b); err != nil {
		return fmt.Errorf("write %s: %w", f.KeyringFile(), err)
	}
	return nil
}

// LoadKeyring reads the keyring file.
func (f Files) LoadKeyring() (Keyring, error) {
	var k Keyring
	b, err := os.ReadFile(f.KeyringFile())
	if err != nil {
		return k, fmt.Errorf("read the gossip keyring: %w", err)
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("%s: %w", f.KeyringFile(), err)
	}
	return k, nil
}

// KeyID names a gossip key without revealing it: the first 8 bytes of its
// SHA-256, in hex.
func KeyID(k []byte) string {
	s := sha256.Sum256(k)
	return hex.EncodeToString(s[:8])
}
