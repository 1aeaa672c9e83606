package secure

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Lifetimes of what the CA signs.
const (
	// CAValidity is how long a cluster CA is valid. CA rotation is not
	// built yet: ten years keeps it out of the way.
	CAValidity = 10 * 365 * 24 * time.Hour
	// DefaultCertValidity is how long node and client certificates are
	// valid. Nodes renew theirs once two thirds of it has passed.
	DefaultCertValidity = 365 * 24 * time.Hour
	// maxClockSkew backdates NotBefore so that a peer whose clock is a
	// little behind accepts a certificate issued a moment ago (a tenth of
	// a short validity, for tests).
	maxClockSkew = 5 * time.Minute
)

func clockSkew(validity time.Duration) time.Duration { return min(maxClockSkew, validity/10) }

// CA is a cluster certificate authority: its certificate and, where the
// node holds it, its private key.
type CA struct {
	Cert *x509.Certificate
	// Key signs certificates; nil on a CA known only by its certificate.
	Key crypto.Signer
}

// NewCA makes a CA for the cluster named in its subject (ECDSA P-256).
func NewCA(cluster string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "herd cluster CA " + cluster, Organization: []string{"herd"}},
		NotBefore:             now.Add(-clockSkew(CAValidity)),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Hash is the SHA-256 of the CA certificate, which join tokens pin.
func (ca *CA) Hash() CAHash { return sha256.Sum256(ca.Cert.Raw) }

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert.Raw) }

// Pool is a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// CertRequest says what a certificate is for.
type CertRequest struct {
	// Name is the node or client name: the subject's common name and, for
	// a node, a DNS SAN (a stable name besides its IPs, rqlite#1507).
	Name string
	// IPs are the IP SANs of a node certificate (its advertise and bind
	// addresses). A client certificate has none.
	IPs []net.IP
	// Client marks a certificate for a client only (etcdctl, the CLI): it
	// cannot serve.
	Client bool
	// Validity is how long the certificate is valid (0: DefaultCertValidity).
	Validity time.Duration
}

// ErrNoCAKey: signing was asked of a CA whose key this node does not hold.
var ErrNoCAKey = errors.New("this node does not hold the CA key")

// Sign issues a certificate for pub as req says. A node certificate is
// good for serving and for client authentication (etcd peers are both).
func (ca *CA) Sign(pub crypto.PublicKey, req CertRequest) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, ErrNoCAKey
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("certificate key: ECDSA curve %s, want P-256", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("certificate key: %T, want ECDSA P-256 or Ed25519", pub)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = DefaultCertValidity
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"herd"}},
		NotBefore:    now.Add(-clockSkew(validity)),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if !req.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{req.Name}
		tmpl.IPAddresses = req.IPs
		if _, isEC := pub.(*ecdsa.PublicKey); isEC {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", req.Name, err)
	}
	return x509.ParseCertificate(der)
}

// Verify checks that cert was issued by this CA and is valid now, for
// client authentication (every herd certificate is).
func (ca *CA) Verify(cert *x509.Certificate) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// NewKey makes a private key for a node or client certificate.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certificate key: %w", err)
	}
	return k, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return s, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM encodes a private key as PKCS #8 PEM.
func KeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM reads the first certificate of a PEM block list.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// ParseKeyPEM reads a PKCS #8 (or SEC 1 EC) private key.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM private key found")
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key of type %T cannot sign", k)
		}
		return s, nil
	}
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, errors.New("private key is neither PKCS #8 nor SEC 1")
	}
	return k, nil
}
