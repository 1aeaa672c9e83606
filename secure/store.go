package secure

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Store holds a node's CA and its current certificate, and hands out TLS
// configurations that read the certificate at every handshake: a renewed
// certificate is used by the next connection, with no restart and without
// touching connections already open. Safe for concurrent use.
type Store struct {
	files Files
	ca    atomic.Pointer[CA]
	pool  *x509.CertPool
	cert  atomic.Pointer[tls.Certificate]
}

// ErrCertExpired: the node's certificate is no longer valid.
var ErrCertExpired = errors.New("node certificate has expired")

// OpenStore loads the CA and node certificate from files.
func OpenStore(files Files) (*Store, error) {
	ca, err := files.LoadCA()
	if err != nil {
		return nil, err
	}
	s := &Store{files: files, pool: ca.Pool()}
	s.ca.Store(ca)
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the node certificate again (after a renewal wrote it).
func (s *Store) Reload() error {
	c, err := s.files.LoadNodeCert()
	if err != nil {
		return err
	}
	if err := s.CA().Verify(c.Leaf); err != nil {
		if now := time.Now(); now.After(c.Leaf.NotAfter) {
			return fmt.Errorf("%w: %s expired at %s", ErrCertExpired, s.files.CertFile(), c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return fmt.Errorf("%s was not issued by the cluster CA in %s: %w", s.files.CertFile(), s.files.CAFile(), err)
	}
	s.cert.Store(&c)
	return nil
}

// CA is the cluster CA (with its key only where this node holds it).
func (s *Store) CA() *CA { return s.ca.Load() }

// AddCAKey gives the store the CA's key (fetched from the registry), after
// checking that it is the key of the store's CA certificate.
func (s *Store) AddCAKey(key crypto.Signer) error {
	ca := s.CA()
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(ca.Cert.PublicKey) {
		return errors.New("the key is not the cluster CA's")
	}
	s.ca.Store(&CA{Cert: ca.Cert, Key: key})
	return nil
}

// Files is where the store reads from.
func (s *Store) Files() Files { return s.files }

// Leaf is the node's current certificate.
func (s *Store) Leaf() *x509.Certificate { return s.cert.Load().Leaf }

// Certificate is the node's current key pair.
func (s *Store) Certificate() *tls.Certificate { return s.cert.Load() }

// chain is the node certificate followed by the CA certificate, so a
// joiner learns the CA from the handshake itself.
func (s *Store) chain() *tls.Certificate {
	c := *s.cert.Load()
	c.Certificate = append(append([][]byte(nil), c.Certificate[0]), s.CA().Cert.Raw)
	return &c
}

// ServerConfig serves with the node certificate. clientAuth says whether
// peers must present a cluster certificate (etcd: RequireAndVerify) or may
// (the agent API: VerifyClientCertIfGiven).
func (s *Store) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.chain(), nil
		},
		ClientAuth: clientAuth,
		ClientCAs:  s.pool,
	}
}

// ClientConfig trusts only the cluster CA and presents the node
// certificate.
func (s *Store) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    s.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// RenewDue reports whether the certificate has used up two thirds of its
// lifetime at now.
func RenewDue(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return now.After(cert.NotBefore.Add(life * 2 / 3))
}
