// Package apiclient is the agent API client the benchmark commands share
// (bench/regload, bench/checkload): HTTPS trusting the cluster CA, with an
// API token on every request.
package apiclient

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// Pool reads the CA certificate in caFile.
func Pool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// New returns a client that trusts the CA in caFile and sends the token
// in tokenFile.
func New(caFile, tokenFile string) (*http.Client, error) {
	pool, err := Pool(caFile)
	if err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64}
	return &http.Client{Timeout: 30 * time.Second, Transport: tokenRT{tr, strings.TrimSpace(string(tok))}}, nil
}

type tokenRT struct {
	base  http.RoundTripper
	token string
}

func (t tokenRT) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(r)
}
