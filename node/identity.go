package node

import (
	"context"
	"crypto"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/herdcluster/herd/acl"
	"github.com/herdcluster/herd/gossip"
	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// Identity errors.
var (
	// ErrNoToken: the node must be admitted to a cluster and has no join
	// token.
	ErrNoToken = errors.New("no join token")
	// ErrPlaintextDataDir: the data dir holds a registry member made
	// without transport security.
	ErrPlaintextDataDir = errors.New("data dir was made by a herd without transport security")
)

// Names of the identity material in the registry (registry.Secrets).
const (
	secretCAKey    = "ca-key"
	secretJoin     = "join-secret"
	secretKeyring  = "keyring"
	tokenHelpShort = "the first node prints it; `herd token show --data-dir DIR` prints it on any node's machine"
)

// identityAtStart decides, before gossip starts, where this node's
// identity comes from:
//   - --insecure: none (plaintext everywhere, said loudly);
//   - the data dir holds one: it is loaded (a restart needs no token);
//   - the data dir holds a plaintext member: refused, with what to do;
//   - no --join and no --bootstrap-expect: the node creates the cluster's
//     CA, join secret and gossip key, and prints the join token;
//   - --bootstrap-expect: the token's secret keys the formation's gossip;
//     the identity is settled once the founders agree (bootstrapExpect);
//   - --join: the node is admitted through the join exchange now, so that
//     it gossips with the cluster's keyring from its first packet.
func (n *Node) identityAtStart(ctx context.Context) error {
	files := n.files()
	cfg := &n.cfg
	if cfg.Insecure {
		if files.HasIdentity() {
			return fmt.Errorf("--insecure: %s belongs to a secured cluster (it holds its certificates); drop --insecure", cfg.DataDir)
		}
		n.logger.Warn("INSECURE: --insecure is set: gossip, the registry and the agent API run in plaintext without authentication; anyone who reaches this node's ports owns the cluster")
		return nil
	}
	switch {
	case files.HasIdentity():
		store, err := secure.OpenStore(files)
		if errors.Is(err, secure.ErrCertExpired) && cfg.JoinToken != "" && len(cfg.Join) > 0 {
			n.logger.Warn("this node's certificate has expired: asking the cluster for a new one with the join token", "err", err)
			return n.admit(ctx, cfg.Join, time.Time{})
		}
		if errors.Is(err, secure.ErrCertExpired) {
			return fmt.Errorf("%w: start it with --join ADDR and --join-token TOKEN to be issued a new one (%s)", err, tokenHelpShort)
		}
		if err != nil {
			return err
		}
		kr, err := files.LoadKeyring()
		if err != nil {
			return err
		}
		n.setIdentity(store, kr)
		if tok, err := files.LoadToken(); err == nil {
			n.token.Store(&tok)
		}
		return nil
	case registry.HasData(cfg.etcdDir()):
		return fmt.Errorf("%w: %s holds a registry member but no cluster certificates. herd does not keep a cluster plaintext without being told: "+
			"either start every node of that cluster with --insecure (plaintext, as before), or save a snapshot (herd snapshot save), "+
			"restore it into a new data dir (herd snapshot restore) and start the cluster afresh, which creates its certificates", ErrPlaintextDataDir, cfg.DataDir)
	case cfg.BootstrapExpect > 1:
		if cfg.token == nil {
			return fmt.Errorf("--bootstrap-expect %d: %w: make one with `herd token generate` and start every node with the same --join-token (or HERD_JOIN_TOKEN)", cfg.BootstrapExpect, ErrNoToken)
		}
		if cfg.token.Pinned() {
			return fmt.Errorf("--bootstrap-expect %d: the join token pins a CA, so its cluster exists already: join it with --join and without --bootstrap-expect, or make a new token with `herd token generate`", cfg.BootstrapExpect)
		}
		tok := *cfg.token
		n.token.Store(&tok)
		return nil
	case len(cfg.Join) == 0:
		if cfg.token != nil && cfg.token.Pinned() {
			return fmt.Errorf("--join-token pins a CA, so its cluster exists already, but the node has no --join: give it --join ADDR to join that cluster, or no token to create a new one")
		}
		// A token given to the node that creates the cluster (made with
		// `herd token generate`) lends it its secret: nodes started with
		// the same token may then start first and wait for it.
		return n.createIdentity(cfg.token, true)
	default:
		if cfg.token == nil {
			return fmt.Errorf("--join: %w: start the node with --join-token TOKEN, HERD_JOIN_TOKEN or --join-token-file (%s)", ErrNoToken, tokenHelpShort)
		}
		ctx, deadline, cancel := n.joinDeadline(ctx)
		defer cancel()
		return n.admit(ctx, cfg.Join, deadline)
	}
}

func (n *Node) files() secure.Files { return secure.Files{Dir: n.cfg.DataDir} }

// gossipKeys is the keyring gossip starts with: the cluster's, the
// formation's (derived from the token) while a --bootstrap-expect node has
// none, nothing in --insecure mode.
func (n *Node) gossipKeys() ([]byte, [][]byte, error) {
	if kr := n.keyring.Load(); kr != nil {
		return kr.Primary, kr.Keys, nil
	}
	if n.cfg.Insecure {
		return nil, nil, nil
	}
	if t := n.token.Load(); t != nil {
		k, err := formationKey(t.Secret)
		return k, [][]byte{k}, err
	}
	return nil, nil, errors.New("no gossip keyring: the node has no identity")
}

// setIdentity makes store and kr the node's.
func (n *Node) setIdentity(store *secure.Store, kr secure.Keyring) {
	n.keyring.Store(&kr)
	n.store.Store(store)
}

// formationKey is the gossip key of a --bootstrap-expect formation, derived
// from the token's secret so that only nodes holding the token gossip while
// they agree on the founders.
func formationKey(s secure.Secret) ([]byte, error) {
	return hkdf.Key(sha256.New, s[:], nil, "herd bootstrap-expect formation gossip key", secure.GossipKeySize)
}

// createIdentity makes this node the origin of a new cluster's identity: a
// CA, its own certificate, a join secret (the token's, when the node was
// given one, as founders of a formation are) and a gossip key (derived from
// that secret then) and the management token, all in the data dir. It
// prints the management token once, and the join token too when print is
// set.
func (n *Node) createIdentity(formation *secure.Token, print bool) error {
	files := n.files()
	ca, err := secure.NewCA(n.cfg.Name)
	if err != nil {
		return err
	}
	var tok secure.Token
	var kr secure.Keyring
	if formation != nil {
		tok.Secret = formation.Secret
		k, err := formationKey(formation.Secret)
		if err != nil {
			return err
		}
		kr = secure.Keyring{Primary: k, Keys: [][]byte{k}}
	} else {
		if tok.Secret, err = secure.NewSecret(); err != nil {
			return err
		}
		k := make([]byte, secure.GossipKeySize)
		if _, err := rand.Read(k); err != nil {
			return err
		}
		kr = secure.Keyring{Primary: k, Keys: [][]byte{k}}
	}
	tok.CA = ca.Hash()
	key, err := secure.NewKey()
	if err != nil {
		return err
	}
	cert, err := ca.Sign(key.Public(), n.certRequest())
	if err != nil {
		return err
	}
	if err := n.saveIdentity(ca, true, cert.Raw, key, kr, tok); err != nil {
		return err
	}
	// The management token: published (as its hash) once the registry
	// runs, unless the cluster was bootstrapped already.
	mgmt, err := acl.NewSecret()
	if err != nil {
		return err
	}
	if err := files.SaveACLToken(mgmt); err != nil {
		return err
	}
	n.logger.Info("created the cluster's identity: a CA, this node's certificate, the join secret, the gossip key and the management token",
		"ca", tok.CA.String(), "token_file", files.TokenFile(), "management_token_file", files.ACLTokenFile())
	if n.cfg.Out == nil {
		return nil
	}
	if print {
		fmt.Fprintf(n.cfg.Out, "\nherd: this node created a new cluster. Its join token (kept in %s, mode 0600; `herd token show --data-dir %s` prints it again):\n\n    %s\n\n"+
			"Start other nodes with: herd agent --join %s --join-token <token>   (or HERD_JOIN_TOKEN=<token>)\n",
			files.TokenFile(), n.cfg.DataDir, tok.String(), n.gossipAddr())
	}
	// A founder of a --bootstrap-expect formation prints this part alone:
	// the operator holds the join token already.
	fmt.Fprintf(n.cfg.Out, "\nherd: the management token of the agent API (policy operator; kept in %s, mode 0600):\n\n    export HERD_TOKEN=%s\n\n"+
		"Make narrower tokens with: herd acl token create --name NAME --policy read|service:PREFIX|operator\n\n",
		files.ACLTokenFile(), mgmt)
	return nil
}

func (n *Node) gossipAddr() string {
	return net.JoinHostPort(n.cfg.advertise(), strconv.Itoa(n.cfg.GossipPort))
}

// certRequest is what this node's certificate holds: its name and the
// addresses it is reached at.
func (n *Node) certRequest() secure.CertRequest {
	ips := []net.IP{net.ParseIP(n.cfg.advertise())}
	if b := net.ParseIP(n.cfg.BindIP); !b.IsUnspecified() && !b.Equal(ips[0]) {
		ips = append(ips, b)
	} else if b.IsUnspecified() {
		// etcd dials its own listener on loopback for its HTTP gateway.
		ips = append(ips, net.IPv4(127, 0, 0, 1))
	}
	return secure.CertRequest{Name: n.cfg.Name, IPs: ips, Validity: n.cfg.CertValidity}
}

// saveIdentity writes the identity files and makes them the node's.
func (n *Node) saveIdentity(ca *secure.CA, withCAKey bool, certDER []byte, key crypto.Signer, kr secure.Keyring, tok secure.Token) error {
	files := n.files()
	if err := files.SaveCA(ca, withCAKey); err != nil {
		return err
	}
	kp, err := secure.KeyPEM(key)
	if err != nil {
		return err
	}
	if err := files.SaveNodeCert(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), kp); err != nil {
		return err
	}
	if err := files.SaveKeyring(kr); err != nil {
		return err
	}
	if err := files.SaveToken(tok); err != nil {
		return err
	}
	store, err := secure.OpenStore(files)
	if err != nil {
		return err
	}
	n.token.Store(&tok)
	n.setIdentity(store, kr)
	return nil
}

// admit runs the join exchange through addrs (gossip addresses) until one
// node admits this one, ctx is done or deadline passes. A wrong token or a
// node of another cluster ends it at once: trying again cannot help.
func (n *Node) admit(ctx context.Context, addrs []string, deadline time.Time) error {
	tok := n.cfg.token
	if tok == nil {
		return fmt.Errorf("%w: this node must be admitted to the cluster (%s)", ErrNoToken, tokenHelpShort)
	}
	key, err := secure.NewKey()
	if err != nil {
		return err
	}
	req := n.certRequest()
	return n.retryJoin(ctx, deadline, func() (bool, error) {
		var failures []string
		for _, a := range addrs {
			addr, err := joinAddr(a)
			if err != nil {
				return true, fmt.Errorf("--join: %w", err)
			}
			if addr == n.gossipAddr() {
				continue
			}
			adm, err := secure.Join(ctx, addr, *tok, secure.JoinRequest{Name: req.Name, IPs: req.IPs, Key: key})
			if err == nil {
				return true, n.keepAdmission(adm, key, *tok, addr)
			}
			if errors.Is(err, secure.ErrWrongCA) || errors.Is(err, secure.ErrWrongToken) {
				// Trying again cannot help.
				return true, fmt.Errorf("join refused: %w", err)
			}
			failures = append(failures, err.Error())
		}
		if len(failures) == 0 {
			return true, fmt.Errorf("--join: no address to join but this node's own (%s)", n.gossipAddr())
		}
		return false, errors.New(strings.Join(failures, "; "))
	})
}

// keepAdmission keeps what an admission brought: the CA, the node's
// certificate, the keyring, and the token with the CA pinned.
func (n *Node) keepAdmission(adm *secure.Admission, key crypto.Signer, tok secure.Token, via string) error {
	tok.CA = adm.CA.Hash()
	cert, err := secure.ParseCertPEM(adm.CertPEM)
	if err != nil {
		return err
	}
	if err := n.saveIdentity(adm.CA, false, cert.Raw, key, adm.Keyring, tok); err != nil {
		return err
	}
	n.logger.Info("admitted to the cluster: received this node's certificate and the gossip keyring", "via", via, "ca", tok.CA.String(),
		"expires", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// joinAddr is a --join address as host:port, the gossip port by default.
func joinAddr(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(gossip.DefaultPort)), nil
	}
	return net.JoinHostPort(host, port), nil
}

// memberTLS is the member's TLS: the identity files, and the client
// configuration of the node's store (nil until the node has one). nil in
// --insecure mode.
func (n *Node) memberTLS() *registry.TLS {
	if n.cfg.Insecure {
		return nil
	}
	f := n.files()
	return &registry.TLS{CertFile: f.CertFile(), KeyFile: f.KeyFile(), CAFile: f.CAFile(), Client: n.clientTLS()}
}

// clientTLS is the TLS configuration of the node's registry clients.
func (n *Node) clientTLS() *tls.Config {
	if s := n.store.Load(); s != nil {
		return s.ClientConfig()
	}
	return nil
}

// authority admits joiners for the join server (secure.Authority).
type authority struct{ n *Node }

var _ secure.Authority = authority{}

// JoinSecret is the registry's when the node has a registry client (so a
// rotation takes effect at once on every node), the node's own token's
// while it has none (a formation) or the registry holds none yet.
func (a authority) JoinSecret(ctx context.Context) (secure.Secret, error) {
	if sec := a.n.secrets.Load(); sec != nil {
		v, _, err := sec.Get(ctx, secretJoin)
		switch {
		case err == nil:
			return decodeSecret(v)
		case !errors.Is(err, registry.ErrNoSecret):
			return secure.Secret{}, err
		}
	}
	if t := a.n.token.Load(); t != nil {
		return t.Secret, nil
	}
	return secure.Secret{}, errors.New("this node knows no join secret")
}

func decodeSecret(v []byte) (secure.Secret, error) {
	var s secure.Secret
	if len(v) != 2*len(s) {
		return s, errors.New("the registry's join secret is malformed")
	}
	if _, err := hex.Decode(s[:], v); err != nil {
		return s, errors.New("the registry's join secret is malformed")
	}
	return s, nil
}

// SigningCA is the node's CA with its key: from the data dir, or from the
// registry (then kept in the data dir).
func (a authority) SigningCA(ctx context.Context) (*secure.CA, error) {
	store := a.n.store.Load()
	if store == nil {
		return nil, errors.New("this node has no identity yet")
	}
	if ca := store.CA(); ca.Key != nil {
		return ca, nil
	}
	return a.n.fetchCAKey(ctx)
}

func (a authority) Keyring(context.Context) (secure.Keyring, error) {
	if kr := a.n.keyring.Load(); kr != nil {
		return *kr, nil
	}
	return secure.Keyring{}, errors.New("this node has no gossip keyring yet")
}

func (a authority) Admitted(name string, ips []net.IP) {
	a.n.admitted.Add(1)
}
