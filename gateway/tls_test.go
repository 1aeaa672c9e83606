package gateway_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/secure"
)

// writeCert issues a server certificate for 127.0.0.1 from ca into dir.
func writeCert(t *testing.T, ca *secure.CA, dir, name string) {
	t.Helper()
	key, err := secure.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(key.Public(), secure.CertRequest{Name: name, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := secure.KeyPEM(key)
	if err := secure.WriteSecretFile(filepath.Join(dir, "gw-key.pem"), kp); err != nil {
		t.Fatal(err)
	}
	if err := secure.WriteSecretFile(filepath.Join(dir, "gw.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})); err != nil {
		t.Fatal(err)
	}
}

// The gateway terminates TLS with certificate files it reloads when they
// change; every path through it (its own server's GETs, net/http's POSTs)
// tells the upstream the client came over https.
func TestGatewayTerminatesTLS(t *testing.T) {
	ca, err := secure.NewCA("gateway-test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeCert(t, ca, dir, "first")
	fc, err := secure.NewFileCertificate(filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b := startBackend(t, "b1")
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", b.instance("svc", "n1", ""))
	cfg := gateway.DefaultConfig()
	cfg.TLS = &tls.Config{GetCertificate: fc.GetCertificate, MinVersion: tls.VersionTLS12}
	gw, err := gateway.New(cfg, cat, live, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	url := "https://" + ln.Addr().String()
	newClient := func() *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, DisableKeepAlives: true}}
	}
	hc := newClient()
	// GET: the gateway's own server and the express path; DELETE: net/http
	// and the general path; POST: the general path with a body.
	for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
		req, _ := http.NewRequest(method, url+"/svc/x", strings.NewReader(strings.Repeat("b", map[string]int{"GET": 0, "POST": 10}[method])))
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s over TLS: %v", method, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var s seen
		if res.StatusCode != 200 || json.Unmarshal(body, &s) != nil {
			t.Fatalf("%s over TLS: %d %s", method, res.StatusCode, body)
		}
		if got := s.Header.Get("X-Forwarded-Proto"); got != "https" {
			t.Fatalf("%s: the upstream was told X-Forwarded-Proto %q", method, got)
		}
	}
	// Plain HTTP to the TLS port gets no answer.
	if res, err := http.Get("http://" + ln.Addr().String() + "/svc/x"); err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatal("plain HTTP was served on the TLS port")
		}
	}

	served1 := func() string {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool()})
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served1(); got != "first" {
		t.Fatalf("serving %q", got)
	}
	writeCert(t, ca, dir, "second")
	// The reload is checked once a second, at a handshake.
	waitFor(t, "the replaced certificate files served", func() bool { return served1() == "second" })
	// A pair that does not load keeps the last good one in service.
	if err := os.WriteFile(filepath.Join(dir, "gw.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed reload reported", func() bool {
		if got := served1(); got != "second" {
			t.Fatalf("after a bad file: serving %q", got)
		}
		return fc.Err() != nil
	})
	if got := served1(); got != "second" {
		t.Fatalf("after a bad file: serving %q", got)
	}
}

// issue signs a fresh key for req and returns the pair.
func issue(t testing.TB, ca *secure.CA, req secure.CertRequest) tls.Certificate {
	t.Helper()
	key, err := secure.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(key.Public(), req)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// An instance registered with TLS (a service host under --internal-tls) is
// dialled with TLS on every path through the gateway, presenting the
// gateway's certificate and verifying the instance's against the cluster
// CA; a gateway that cannot do both is refused by it, or refuses it.
func TestGatewayDialsTLSInstances(t *testing.T) {
	ca, err := secure.NewCA("gateway-test")
	if err != nil {
		t.Fatal(err)
	}
	server := issue(t, ca, secure.CertRequest{Name: "host", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	b := startBackendTLS(t, "b1", &tls.Config{
		Certificates: []tls.Certificate{server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	})
	inst := b.instance("svc", "n1", "")
	inst.TLS = true
	cat, live := newCatalog(), newLiveness()
	cat.set("svc", inst)

	gwCert := issue(t, ca, secure.CertRequest{Name: "gw-node", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	cfg := gateway.DefaultConfig()
	cfg.UpstreamTLS = &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{gwCert}, MinVersion: tls.VersionTLS12}
	tg := startGateway(t, cfg, cat, live)
	// GET: the express path; DELETE: the general path; POST: the general
	// path with a body. Twice each, so the second goes over a pooled
	// connection.
	for range 2 {
		for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
			res, body := tg.do(t, method, "/svc/x?q=1", nil, strings.NewReader(strings.Repeat("b", map[string]int{"POST": 10}[method])))
			var s seen
			if res.StatusCode != 200 || json.Unmarshal(body, &s) != nil {
				t.Fatalf("%s to a TLS instance: %d %s", method, res.StatusCode, body)
			}
			if s.ClientCert != "gw-node" || s.Method != method || s.RequestURI != "/x?q=1" {
				t.Fatalf("%s to a TLS instance: it saw %+v", method, s)
			}
		}
	}

	// A gateway with no certificate to present (an --insecure node) says
	// so, and the instance is not spoken to in plaintext.
	before := b.hits.Load()
	plain := startGateway(t, gateway.DefaultConfig(), cat, newLiveness())
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		res, body := plain.do(t, method, "/svc/x", nil, strings.NewReader(strings.Repeat("b", map[string]int{"POST": 10}[method])))
		if res.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s from a gateway without a certificate: %d %s", method, res.StatusCode, body)
		}
	}
	// A gateway of another cluster: the instance's certificate is not
	// from its CA, and its own is not from the instance's.
	other, err := secure.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	ocfg := gateway.DefaultConfig()
	ocfg.UpstreamTLS = &tls.Config{RootCAs: other.Pool(), Certificates: []tls.Certificate{issue(t, other, secure.CertRequest{Name: "stranger"})}}
	stranger := startGateway(t, ocfg, cat, newLiveness())
	res, body := stranger.do(t, http.MethodGet, "/svc/x", nil, nil)
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("a gateway of another cluster: %d %s", res.StatusCode, body)
	}
	if got := b.hits.Load(); got != before {
		t.Fatalf("the TLS instance served %d requests from gateways without a cluster certificate", got-before)
	}
}
