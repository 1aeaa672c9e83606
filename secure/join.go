package secure

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// The join exchange, on one TLS 1.3 connection to any node of the cluster
// (herd carries it on the gossip port: see gossip.Config.JoinConns):
//
//  0. CA: the joiner asks for the CA certificate (CARequest) and checks it
//     against the token's pin; on a mismatch it stops: nothing has been
//     sent but the request.
//  1. TLS, verified against that CA for the address dialled (no unverified
//     handshake anywhere).
//  2. joiner -> node: hello {v, name}
//  3. node -> joiner: challenge {v, server_proof}, where server_proof is
//     HMAC(secret, "server" | EKM | CA hash) and EKM is keying material
//     exported from this TLS session. A token that pins no CA makes the
//     joiner check it: only a node holding the secret can produce it.
//  4. joiner -> node: request {name, ip, csr, proof}, proof =
//     HMAC(secret, "client" | EKM | SHA-256(CSR)). The secret never crosses
//     the wire, and a proof is worth nothing on another connection.
//  5. node -> joiner: result {cert, ca, keyring} or {error, reason}.
//
// Each message is one JSON object on its own line, at most maxMessage
// bytes.

// Join errors, on the joiner's side and in the reason the node answers.
var (
	// ErrWrongToken: the node does not accept the token's secret (a wrong
	// token, or one that was rotated).
	ErrWrongToken = errors.New("the cluster refused the join token")
	// ErrWrongCA: the node presented a CA other than the token's, or could
	// not prove it holds the token's secret: it is not this token's cluster.
	ErrWrongCA = errors.New("the node is not in the join token's cluster")
	// ErrJoinUnavailable: the node cannot issue a certificate now (its
	// registry is unreachable); another node may.
	ErrJoinUnavailable = errors.New("the node cannot admit new nodes right now")
	// ErrJoinRefused: the node refused the request as malformed.
	ErrJoinRefused = errors.New("the node refused the join request")
	// ErrUnreachable: nothing answers at the address.
	ErrUnreachable = errors.New("nothing answers")
	// ErrNotHerd: something answers but does not speak the join exchange.
	ErrNotHerd = errors.New("answers on TCP but is not a herd node")
)

const (
	joinVersion = 1
	maxMessage  = 64 << 10
	ekmLabel    = "EXPORTER-herd-join-v1"
	// JoinTimeout bounds one exchange on either side.
	JoinTimeout = 10 * time.Second
)

// Reasons a node gives for a refusal.
const (
	reasonWrongToken  = "wrong_token"
	reasonUnavailable = "unavailable"
	reasonBadRequest  = "bad_request"
)

type helloMsg struct {
	V    int    `json:"v"`
	Name string `json:"name"`
}

type challengeMsg struct {
	V           int    `json:"v"`
	ServerProof string `json:"server_proof,omitempty"`
	Error       string `json:"error,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

type requestMsg struct {
	Name  string   `json:"name"`
	IPs   []string `json:"ips"`
	CSR   string   `json:"csr"`
	Proof string   `json:"proof"`
}

type resultMsg struct {
	Cert    string   `json:"cert,omitempty"`
	CA      string   `json:"ca,omitempty"`
	Keyring *Keyring `json:"keyring,omitempty"`
	Error   string   `json:"error,omitempty"`
	Reason  string   `json:"reason,omitempty"`
}

// JoinRequest is what a joiner asks for.
type JoinRequest struct {
	// Name is the joiner's node name (a DNS label).
	Name string
	// IPs are the addresses its certificate must hold (advertise, bind).
	IPs []net.IP
	// Key is the joiner's private key; only a CSR signed with it is sent.
	Key crypto.Signer
}

// Admission is what a joiner receives.
type Admission struct {
	CA      *CA
	CertPEM []byte
	Keyring Keyring
}

// ValidName reports whether s is a node name the exchange accepts (a DNS
// label, as api.ValidName; repeated here to keep the package free of herd's
// other packages).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

func proof(secret Secret, label string, ekm []byte, extra []byte) []byte {
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(ekm)
	m.Write(extra)
	return m.Sum(nil)
}

// conn frames messages on a connection.
type msgConn struct {
	c net.Conn
	r *bufio.Reader
}

func newMsgConn(c net.Conn) *msgConn { return &msgConn{c: c, r: bufio.NewReaderSize(c, 4096)} }

func (m *msgConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = m.c.Write(append(b, '\n'))
	return err
}

func (m *msgConn) recv(v any) error {
	line, err := readLine(m.r)
	if err != nil {
		return err
	}
	return decodeMessage(line, v)
}

// readLine reads one line of at most maxMessage bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxMessage {
			return nil, fmt.Errorf("join message over %d bytes", maxMessage)
		}
		if err == nil {
			return buf, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// decodeMessage decodes one message strictly: unknown fields and trailing
// data are errors.
func decodeMessage(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed join message: %w", err)
	}
	if dec.More() {
		return errors.New("malformed join message: more than one JSON value")
	}
	return nil
}

func exportEKM(cs tls.ConnectionState) ([]byte, error) {
	return cs.ExportKeyingMaterial(ekmLabel, nil, 32)
}

// Join runs the exchange with the node at addr (host:port) and returns the
// admission. The errors say which check failed (ErrWrongCA, ErrWrongToken,
// ErrJoinUnavailable, ErrJoinRefused, or a network error) and never hold
// the secret.
func Join(ctx context.Context, addr string, tok Token, req JoinRequest) (*Admission, error) {
	if !ValidName(req.Name) {
		return nil, fmt.Errorf("join: node name %q is not a DNS label", req.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, JoinTimeout)
	defer cancel()
	caCert, err := FetchCA(ctx, addr)
	if err != nil {
		return nil, err
	}
	if got := CAHash(sha256.Sum256(caCert.Raw)); tok.Pinned() && got != tok.CA {
		return nil, fmt.Errorf("%w: %s presents CA %s, the token pins %s; nothing was sent", ErrWrongCA, addr, got, tok.CA)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%w)", addr, ErrUnreachable, err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	ca := caCert
	// Verified against that CA, for the address dialled: node
	// certificates hold their advertise IP.
	tc := tls.Client(raw, &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    (&CA{Cert: caCert}).Pool(),
		ServerName: raw.RemoteAddr().(*net.TCPAddr).IP.String(),
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("%w: the certificate of %s does not verify against the CA it presents: %w", ErrWrongCA, addr, err)
		}
		return nil, fmt.Errorf("%s: %w (TLS handshake: %w)", addr, ErrNotHerd, err)
	}
	ekm, err := exportEKM(tc.ConnectionState())
	if err != nil {
		return nil, fmt.Errorf("join via %s: %w", addr, err)
	}
	mc := newMsgConn(tc)
	if err := mc.send(helloMsg{V: joinVersion, Name: req.Name}); err != nil {
		return nil, fmt.Errorf("join via %s: %w", addr, err)
	}
	var ch challengeMsg
	if err := mc.recv(&ch); err != nil {
		return nil, fmt.Errorf("join via %s: read challenge: %w", addr, err)
	}
	if ch.Error != "" {
		return nil, refusal(addr, ch.Reason, ch.Error)
	}
	caHash := sha256.Sum256(ca.Raw)
	sp, err := hex.DecodeString(ch.ServerProof)
	if err != nil || !hmac.Equal(sp, proof(tok.Secret, "server", ekm, caHash[:])) {
		if !tok.Pinned() {
			return nil, fmt.Errorf("%w: %s presents CA %s but cannot prove it holds the token's secret; nothing was sent",
				ErrWrongCA, addr, CAHash(caHash))
		}
		// The CA is the pinned one, so this is the cluster: its secret is
		// not the token's. The request below gets the node's refusal.
	}

	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.Name}}, req.Key)
	if err != nil {
		return nil, fmt.Errorf("join: certificate request: %w", err)
	}
	rm := requestMsg{
		Name:  req.Name,
		CSR:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		Proof: hex.EncodeToString(proof(tok.Secret, "client", ekm, sha256Of(csrDER))),
	}
	for _, ip := range req.IPs {
		rm.IPs = append(rm.IPs, ip.String())
	}
	if err := mc.send(rm); err != nil {
		return nil, fmt.Errorf("join via %s: %w", addr, err)
	}
	var res resultMsg
	if err := mc.recv(&res); err != nil {
		return nil, fmt.Errorf("join via %s: read result: %w", addr, err)
	}
	if res.Error != "" {
		return nil, refusal(addr, res.Reason, res.Error)
	}
	return checkAdmission(addr, ca, req.Key, res)
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// CARequest is the whole of what a joiner sends to learn the cluster CA:
// a connection that opens with it gets the CA certificate in PEM, then
// EOF. Its first byte, 'H', is neither a TLS record nor a memberlist
// message, so the gossip port hands it to the join listener as well.
const CARequest = "HERD-CA/1\n"

// FetchCA asks the node at addr for the cluster CA certificate. What comes
// back is not trusted yet: Join checks it against the token's pin (or,
// for an unpinned token, has the node prove it holds the secret over TLS
// verified against it) before anything secret is sent.
func FetchCA(ctx context.Context, addr string) (*x509.Certificate, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%w)", addr, ErrUnreachable, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, CARequest); err != nil {
		return nil, fmt.Errorf("%s: %w (%w)", addr, ErrNotHerd, err)
	}
	b, err := io.ReadAll(io.LimitReader(c, maxMessage))
	if err != nil {
		return nil, fmt.Errorf("%s: %w (reading its CA: %w)", addr, ErrNotHerd, err)
	}
	ca, err := ParseCertPEM(b)
	if err != nil || !ca.IsCA {
		return nil, fmt.Errorf("%s: %w (it answered no CA certificate)", addr, ErrNotHerd)
	}
	return ca, nil
}

func refusal(addr, reason, msg string) error {
	switch reason {
	case reasonWrongToken:
		return fmt.Errorf("%w: %s: %s", ErrWrongToken, addr, msg)
	case reasonUnavailable:
		return fmt.Errorf("%w: %s: %s", ErrJoinUnavailable, addr, msg)
	}
	return fmt.Errorf("%w: %s: %s", ErrJoinRefused, addr, msg)
}

func checkAdmission(addr string, caCert *x509.Certificate, key crypto.Signer, res resultMsg) (*Admission, error) {
	bad := func(what string, err error) error {
		return fmt.Errorf("join via %s: the node's answer has %s: %v", addr, what, err)
	}
	ca, err := ParseCertPEM([]byte(res.CA))
	if err != nil {
		return nil, bad("no CA", err)
	}
	if !ca.Equal(caCert) {
		return nil, bad("a CA other than the one of its TLS chain", errors.New("mismatch"))
	}
	cert, err := ParseCertPEM([]byte(res.Cert))
	if err != nil {
		return nil, bad("no certificate", err)
	}
	c := &CA{Cert: ca}
	if err := c.Verify(cert); err != nil {
		return nil, bad("a certificate the CA did not issue", err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, bad("a certificate for another key", errors.New("mismatch"))
	}
	if res.Keyring == nil {
		return nil, bad("no gossip keyring", errors.New("missing"))
	}
	return &Admission{CA: c, CertPEM: []byte(res.Cert), Keyring: *res.Keyring}, nil
}

// Authority is what a join server needs from its node. Methods are called
// from the server's connection goroutines, concurrently; ctx bounds them.
type Authority interface {
	// JoinSecret is the cluster's current join secret. An error (the
	// registry unreachable) refuses the join as unavailable.
	JoinSecret(ctx context.Context) (Secret, error)
	// SigningCA is the cluster CA with its key.
	SigningCA(ctx context.Context) (*CA, error)
	// Keyring is the current gossip keyring.
	Keyring(ctx context.Context) (Keyring, error)
	// Admitted is told of every node admitted (for the log and metrics).
	Admitted(name string, ips []net.IP)
}

// JoinServerConfig configures a join server.
type JoinServerConfig struct {
	// Store presents the node's certificate and the CA.
	Store *Store
	// Authority admits joiners.
	Authority Authority
	// CertValidity is how long issued certificates are valid (0: the
	// default).
	CertValidity time.Duration
	// MaxConcurrent bounds exchanges in progress; more wait in the
	// listener's backlog (default 16).
	MaxConcurrent int
	Logger        *slog.Logger
}

// JoinServer answers join exchanges on a listener.
type JoinServer struct {
	cfg    JoinServerConfig
	logger *slog.Logger
	sem    chan struct{}

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewJoinServer returns a server; Serve runs it.
func NewJoinServer(cfg JoinServerConfig) *JoinServer {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 16
	}
	l := cfg.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &JoinServer{cfg: cfg, logger: l.With("component", "join"), sem: make(chan struct{}, cfg.MaxConcurrent), conns: map[net.Conn]struct{}{}}
}

// Serve accepts exchanges until ln closes or Close is called.
func (s *JoinServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("join server: %w", err)
		}
		s.sem <- struct{}{}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			<-s.sem
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops accepting, closes exchanges in progress and waits for them.
// Safe to call more than once.
func (s *JoinServer) Close() {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *JoinServer) handle(raw net.Conn) {
	defer raw.Close()
	from := raw.RemoteAddr().String()
	ctx, cancel := context.WithTimeout(context.Background(), JoinTimeout)
	defer cancel()
	_ = raw.SetDeadline(time.Now().Add(JoinTimeout))
	br := bufio.NewReaderSize(raw, 64)
	if first, err := br.Peek(1); err != nil {
		return
	} else if first[0] == CARequest[0] {
		line, err := br.ReadString('\n')
		if err != nil || line != CARequest {
			s.logger.Warn("join: a connection that is not a CA request", "from", from)
			return
		}
		if _, err := raw.Write(s.cfg.Store.CA().CertPEM()); err != nil {
			return
		}
		// A joiner whose token pins another CA stops after this.
		s.logger.Info("sent the cluster CA to a joiner (it checks it against its token before it sends anything)", "from", from)
		return
	}
	tc := tls.Server(&bufferedConn{Conn: raw, r: br}, &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cfg.Store.chain(), nil
		},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		s.logger.Warn("join refused: TLS handshake failed", "from", from, "err", err)
		return
	}
	ekm, err := exportEKM(tc.ConnectionState())
	if err != nil {
		s.logger.Warn("join: no keying material", "from", from, "err", err)
		return
	}
	mc := newMsgConn(tc)
	var hello helloMsg
	if err := mc.recv(&hello); err != nil {
		s.logger.Warn("join refused: bad hello", "from", from, "err", err)
		return
	}
	if hello.V != joinVersion || !ValidName(hello.Name) {
		_ = mc.send(challengeMsg{V: joinVersion, Error: fmt.Sprintf("join protocol version %d or name %q not accepted (this node speaks version %d)", hello.V, hello.Name, joinVersion), Reason: reasonBadRequest})
		return
	}
	log := s.logger.With("from", from, "name", hello.Name)
	secret, err := s.cfg.Authority.JoinSecret(ctx)
	if err != nil {
		log.Warn("join refused: the join secret cannot be read", "err", err)
		_ = mc.send(challengeMsg{V: joinVersion, Error: "this node cannot check join tokens right now: " + err.Error(), Reason: reasonUnavailable})
		return
	}
	caHash := s.cfg.Store.CA().Hash()
	if err := mc.send(challengeMsg{V: joinVersion, ServerProof: hex.EncodeToString(proof(secret, "server", ekm, caHash[:]))}); err != nil {
		return
	}
	var req requestMsg
	if err := mc.recv(&req); err != nil {
		log.Info("join abandoned by the joiner after the challenge (a joiner with an unpinned token for another cluster stops here)", "err", err)
		return
	}
	csr, ips, err := checkRequest(hello.Name, req)
	if err != nil {
		log.Warn("join refused: bad request", "err", err)
		_ = mc.send(resultMsg{Error: err.Error(), Reason: reasonBadRequest})
		return
	}
	p, _ := hex.DecodeString(req.Proof)
	if !hmac.Equal(p, proof(secret, "client", ekm, sha256Of(csr.Raw))) {
		log.Warn("join refused: wrong join token (its proof does not match this cluster's secret)")
		_ = mc.send(resultMsg{Error: "wrong join token: it is not this cluster's, or it was rotated (herd token show on a node prints the current one)", Reason: reasonWrongToken})
		return
	}
	ca, err := s.cfg.Authority.SigningCA(ctx)
	if err == nil && !ca.Cert.Equal(s.cfg.Store.CA().Cert) {
		err = errors.New("the registry's CA is not the one this node serves with")
	}
	if err != nil {
		log.Warn("join refused: cannot sign", "err", err)
		_ = mc.send(resultMsg{Error: "this node cannot issue certificates right now: " + err.Error(), Reason: reasonUnavailable})
		return
	}
	kr, err := s.cfg.Authority.Keyring(ctx)
	if err != nil {
		log.Warn("join refused: no gossip keyring", "err", err)
		_ = mc.send(resultMsg{Error: "this node cannot read the gossip keyring right now: " + err.Error(), Reason: reasonUnavailable})
		return
	}
	cert, err := ca.Sign(csr.PublicKey, CertRequest{Name: hello.Name, IPs: ips, Validity: s.cfg.CertValidity})
	if err != nil {
		log.Warn("join refused: signing failed", "err", err)
		_ = mc.send(resultMsg{Error: err.Error(), Reason: reasonBadRequest})
		return
	}
	if err := mc.send(resultMsg{Cert: string(certPEM(cert.Raw)), CA: string(ca.CertPEM()), Keyring: &kr}); err != nil {
		log.Warn("join: could not send the admission", "err", err)
		return
	}
	log.Info("admitted a node: issued its certificate", "ips", req.IPs, "expires", cert.NotAfter.UTC().Format(time.RFC3339))
	s.cfg.Authority.Admitted(hello.Name, ips)
}

// checkRequest validates a join request against the hello's name.
func checkRequest(name string, req requestMsg) (*x509.CertificateRequest, []net.IP, error) {
	if req.Name != name {
		return nil, nil, fmt.Errorf("request name %q differs from the hello's %q", req.Name, name)
	}
	if len(req.IPs) == 0 || len(req.IPs) > 8 {
		return nil, nil, fmt.Errorf("request has %d IPs, want 1-8", len(req.IPs))
	}
	var ips []net.IP
	for _, s := range req.IPs {
		ip := net.ParseIP(s)
		if ip == nil || ip.IsUnspecified() {
			return nil, nil, fmt.Errorf("IP %q is not a usable address", s)
		}
		ips = append(ips, ip)
	}
	blk, _ := pem.Decode([]byte(req.CSR))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, nil, errors.New("csr is not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("csr signature: %w", err)
	}
	return csr, ips, nil
}

// bufferedConn reads through the reader that peeked at its first byte.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
