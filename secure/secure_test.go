package secure

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestToken(t testing.TB, ca *CA) Token {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	tok := Token{Secret: s}
	if ca != nil {
		tok.CA = ca.Hash()
	}
	return tok
}

var tokenCases = []struct {
	name, in string
	err      error
}{
	{"empty", "", ErrBadToken},
	{"spaces", "   \n", ErrBadToken},
	{"no prefix", "K10abc::server:def", ErrBadToken},
	{"future version", "herd2.abcd.ef", ErrTokenVersion},
	{"short secret", "herd1.abcd", ErrBadToken},
	{"not hex", "herd1." + strings.Repeat("zz", 32), ErrBadToken},
	{"zero pin", "herd1." + strings.Repeat("00", 32) + "." + strings.Repeat("ab", 32), ErrBadToken},
	{"too many parts", "herd1.a.b.c", ErrBadToken},
	{"unpinned", "herd1." + strings.Repeat("ab", 32), nil},
	{"pinned", "herd1." + strings.Repeat("cd", 32) + "." + strings.Repeat("ab", 32), nil},
	{"pinned upper case, newline", "herd1." + strings.Repeat("CD", 32) + "." + strings.Repeat("AB", 32) + "\n", nil},
}

func TestParseToken(t *testing.T) {
	for _, tc := range tokenCases {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseToken(tc.in)
			if !errors.Is(err, tc.err) {
				t.Fatalf("ParseToken: %v, want %v", err, tc.err)
			}
			if err != nil {
				// Errors never quote the token: it is a secret.
				if s := strings.TrimSpace(tc.in); len(s) > 12 && strings.Contains(err.Error(), s) {
					t.Fatalf("error quotes the token: %v", err)
				}
				return
			}
			again, err := ParseToken(tok.String())
			if err != nil || again != tok {
				t.Fatalf("round trip: %v %v", again, err)
			}
		})
	}
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	tok := newTestToken(t, ca)
	if !tok.Pinned() || !strings.HasPrefix(tok.String(), TokenPrefix) {
		t.Fatalf("token %v", tok.Pinned())
	}
}

func FuzzParseToken(f *testing.F) {
	for _, tc := range tokenCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrTokenVersion) {
				t.Fatalf("error %v is neither sentinel", err)
			}
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("%q parsed but does not round-trip: %v", s, err)
		}
	})
}

func TestFilesAreSecret(t *testing.T) {
	dir := t.TempDir()
	f := Files{Dir: dir}
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SaveCA(ca, true); err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	cert, err := ca.Sign(key.Public(), CertRequest{Name: "n1", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := KeyPEM(key)
	if err := f.SaveNodeCert(certPEM(cert.Raw), kp); err != nil {
		t.Fatal(err)
	}
	if err := f.SaveToken(newTestToken(t, ca)); err != nil {
		t.Fatal(err)
	}
	gk := bytes.Repeat([]byte{7}, GossipKeySize)
	if err := f.SaveKeyring(Keyring{Primary: gk, Keys: [][]byte{gk}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f.CAFile(), f.CAKeyFile(), f.CertFile(), f.KeyFile(), f.TokenFile(), f.KeyringFile()} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s is %v, want 0600", filepath.Base(p), st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(filepath.Join(dir, "tls")); st.Mode().Perm() != 0o700 {
		t.Errorf("tls dir is %v", st.Mode().Perm())
	}
	s, err := OpenStore(f)
	if err != nil {
		t.Fatal(err)
	}
	if s.Leaf().Subject.CommonName != "n1" || s.CA().Key == nil {
		t.Fatal("store did not load what was saved")
	}
	kr, err := f.LoadKeyring()
	if err != nil || !bytes.Equal(kr.Primary, gk) {
		t.Fatalf("keyring %v", err)
	}
}

func TestCertificateExpiryIsNamed(t *testing.T) {
	f := Files{Dir: t.TempDir()}
	ca, _ := NewCA("test")
	key, _ := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "n1"},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := KeyPEM(key)
	_ = f.SaveCA(ca, false)
	_ = f.SaveNodeCert(certPEM(der), kp)
	if _, err := OpenStore(f); !errors.Is(err, ErrCertExpired) {
		t.Fatalf("OpenStore of an expired certificate: %v, want ErrCertExpired", err)
	}
}

// testAuthority admits with a fixed secret and CA.
type testAuthority struct {
	secret Secret
	ca     *CA
	mu     sync.Mutex
	joined []string
}

func (a *testAuthority) JoinSecret(context.Context) (Secret, error) { return a.secret, nil }
func (a *testAuthority) SigningCA(context.Context) (*CA, error)     { return a.ca, nil }
func (a *testAuthority) Keyring(context.Context) (Keyring, error) {
	k := bytes.Repeat([]byte{1}, GossipKeySize)
	return Keyring{Primary: k, Keys: [][]byte{k}}, nil
}
func (a *testAuthority) Admitted(name string, _ []net.IP) {
	a.mu.Lock()
	a.joined = append(a.joined, name)
	a.mu.Unlock()
}

// logBuffer collects a server's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startJoinServer runs a join server of a new cluster on a loopback port.
func startJoinServer(t *testing.T) (addr string, tok Token, auth *testAuthority, logs *logBuffer) {
	t.Helper()
	dir := t.TempDir()
	f := Files{Dir: dir}
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	cert, _ := ca.Sign(key.Public(), CertRequest{Name: "server", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	kp, _ := KeyPEM(key)
	if err := f.SaveCA(ca, true); err != nil {
		t.Fatal(err)
	}
	if err := f.SaveNodeCert(certPEM(cert.Raw), kp); err != nil {
		t.Fatal(err)
	}
	store, err := OpenStore(f)
	if err != nil {
		t.Fatal(err)
	}
	tok = newTestToken(t, ca)
	auth = &testAuthority{secret: tok.Secret, ca: ca}
	logs = &logBuffer{}
	srv := NewJoinServer(JoinServerConfig{Store: store, Authority: auth, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), tok, auth, logs
}

func joinReq(t *testing.T, name string) JoinRequest {
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return JoinRequest{Name: name, IPs: []net.IP{net.ParseIP("127.0.0.9")}, Key: key}
}

func TestJoinExchange(t *testing.T) {
	addr, tok, auth, logs := startJoinServer(t)
	ctx := context.Background()

	t.Run("admitted", func(t *testing.T) {
		adm, err := Join(ctx, addr, tok, joinReq(t, "joiner"))
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ParseCertPEM(adm.CertPEM)
		if err != nil {
			t.Fatal(err)
		}
		if cert.Subject.CommonName != "joiner" || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.9")) || cert.DNSNames[0] != "joiner" {
			t.Fatalf("certificate for %s %v %v", cert.Subject.CommonName, cert.IPAddresses, cert.DNSNames)
		}
		if adm.CA.Hash() != tok.CA || len(adm.Keyring.Keys) != 1 {
			t.Fatal("admission has the wrong CA or keyring")
		}
	})
	t.Run("unpinned token of the same secret", func(t *testing.T) {
		if _, err := Join(ctx, addr, Token{Secret: tok.Secret}, joinReq(t, "joiner2")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		bad := newTestToken(t, nil)
		bad.CA = tok.CA
		_, err := Join(ctx, addr, bad, joinReq(t, "intruder"))
		if !errors.Is(err, ErrWrongToken) {
			t.Fatalf("err %v, want ErrWrongToken", err)
		}
		waitLog(t, logs, "join refused: wrong join token")
	})
	t.Run("token of another cluster: refused before anything is sent", func(t *testing.T) {
		other, _ := NewCA("other")
		bad := newTestToken(t, other)
		bad.Secret = tok.Secret // even with the right secret, nothing is sent to a CA it does not pin
		_, err := Join(ctx, addr, bad, joinReq(t, "lost"))
		if !errors.Is(err, ErrWrongCA) {
			t.Fatalf("err %v, want ErrWrongCA", err)
		}
		waitLog(t, logs, "sent the cluster CA to a joiner")
	})
	t.Run("unpinned token of another secret: the node cannot prove the secret", func(t *testing.T) {
		_, err := Join(ctx, addr, newTestToken(t, nil), joinReq(t, "lost2"))
		if !errors.Is(err, ErrWrongCA) {
			t.Fatalf("err %v, want ErrWrongCA", err)
		}
		waitLog(t, logs, "join abandoned by the joiner after the challenge")
	})
	t.Run("bad name", func(t *testing.T) {
		if _, err := Join(ctx, addr, tok, joinReq(t, "Bad_Name")); err == nil {
			t.Fatal("a bad name was accepted")
		}
	})
	auth.mu.Lock()
	defer auth.mu.Unlock()
	if strings.Join(auth.joined, ",") != "joiner,joiner2" {
		t.Fatalf("admitted %v", auth.joined)
	}
	if strings.Contains(logs.String(), tok.String()) || strings.Contains(logs.String(), tok.String()[len(tok.String())-64:]) {
		t.Fatal("the server logged the secret")
	}
}

// A fake join server whose CA is not the token's receives the CA request
// and nothing else: the joiner never opens TLS to it, let alone sends a
// proof.
func TestJoinRefusesFakeServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fakeCA, _ := NewCA("fake")
	got := make(chan []byte, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(got)
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, len(CARequest))
			n, _ := io.ReadFull(c, b)
			if string(b[:n]) == CARequest {
				_, _ = c.Write(fakeCA.CertPEM())
			}
			c.Close()
			got <- b[:n]
		}
	}()
	realCA, _ := NewCA("real")
	_, err = Join(context.Background(), ln.Addr().String(), newTestToken(t, realCA), joinReq(t, "victim"))
	if !errors.Is(err, ErrWrongCA) || !strings.Contains(err.Error(), "nothing was sent") {
		t.Fatalf("err %v, want ErrWrongCA", err)
	}
	ln.Close()
	var conns [][]byte
	for b := range got {
		conns = append(conns, b)
	}
	if len(conns) != 1 || string(conns[0]) != CARequest {
		t.Fatalf("the fake server received %q, want only the CA request", conns)
	}
}

func waitLog(t *testing.T, logs *logBuffer, want string) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(logs.String(), want) {
		select {
		case <-deadline.C:
			t.Fatalf("the server never logged %q; log:\n%s", want, logs.String())
		case <-tick.C:
		}
	}
}

func FuzzJoinMessages(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"n1"}`))
	f.Add([]byte(`{"name":"n1","ips":["10.0.0.1"],"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n","proof":"00"}`))
	f.Add([]byte(`{"cert":"x","ca":"y","keyring":{"primary":"AAAA","keys":["AAAA"]}}`))
	f.Add([]byte(`{"v":1,"server_proof":"zz","error":"e","reason":"wrong_token"}` + "\n" + `{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h helloMsg
		_ = decodeMessage(b, &h)
		var ch challengeMsg
		_ = decodeMessage(b, &ch)
		var req requestMsg
		if decodeMessage(b, &req) == nil {
			if csr, ips, err := checkRequest(req.Name, req); err == nil && (csr == nil || len(ips) == 0) {
				t.Fatal("a request passed the checks without a CSR or IPs")
			}
		}
		var res resultMsg
		if decodeMessage(b, &res) == nil && res.Keyring != nil {
			if err := res.Keyring.Validate(); err != nil {
				t.Fatalf("a decoded keyring is invalid: %v", err)
			}
		}
	})
}
