package secure

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// FileCertificate serves a certificate and key kept in two PEM files, and
// reads them again when either changes (checked at most once a second, at
// a handshake), so an operator or an ACME client can replace them with no
// restart. A pair that does not load keeps the previous one in service.
type FileCertificate struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' sizes and modification times
	checked time.Time
	// Err is the last reload's error, nil when the pair in service is the
	// files' current content.
	err error
}

// NewFileCertificate loads the pair; an error names the file.
func NewFileCertificate(certFile, keyFile string) (*FileCertificate, error) {
	f := &FileCertificate{certFile: certFile, keyFile: keyFile}
	stamp, err := f.stat()
	if err != nil {
		return nil, err
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	f.cert, f.stamp, f.checked = &c, stamp, time.Now()
	return f, nil
}

func (f *FileCertificate) stat() (string, error) {
	var s string
	for _, p := range []string{f.certFile, f.keyFile} {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%d/%d;", st.Size(), st.ModTime().UnixNano())
	}
	return s, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (f *FileCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) >= time.Second {
		f.checked = time.Now()
		if stamp, err := f.stat(); err == nil && stamp != f.stamp {
			if c, err := tls.LoadX509KeyPair(f.certFile, f.keyFile); err == nil {
				f.cert, f.stamp, f.err = &c, stamp, nil
			} else {
				// Half-written files (the key replaced, not yet the
				// certificate) load on a later check.
				f.err = err
			}
		}
	}
	return f.cert, nil
}

// Err is the last failed reload's error, nil when the files in service are
// current.
func (f *FileCertificate) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
