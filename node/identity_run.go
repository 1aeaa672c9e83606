package node

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/herdcluster/herd/registry"
	"github.com/herdcluster/herd/secure"
)

// startSecured starts what needs the node's certificate, once it has one:
// the agent API over HTTPS and the join server on the gossip port. In
// --insecure mode it starts the API in plaintext. Safe to call more than
// once.
func (n *Node) startSecured() {
	n.securedOnce.Do(func() {
		store := n.store.Load()
		ln := n.apiLn
		if store != nil {
			// A client certificate is asked for but not required: the
			// operator endpoints that change the cluster's secrets require
			// one (the CLI presents a node's), the rest do not.
			ln = tls.NewListener(ln, store.ServerConfig(tls.VerifyClientCertIfGiven))
			n.joinSrv = secure.NewJoinServer(secure.JoinServerConfig{
				Store: store, Authority: authority{n}, CertValidity: n.cfg.CertValidity, Logger: n.logger,
			})
			n.goBackground(func(context.Context) {
				if err := n.joinSrv.Serve(n.gossip.JoinListener()); err != nil {
					n.fail(err)
				}
			})
		}
		n.goBackground(func(context.Context) {
			if err := n.api.serve(ln); err != nil {
				n.fail(err)
			}
		})
	})
}

// followSecrets runs once the registry client exists: it publishes what
// this node knows of the cluster's identity that the registry does not
// hold yet (the node that created the cluster is the first to), then keeps
// the data dir and gossip in step with the registry: a rotated join secret
// rewrites the token file, a changed keyring is installed, the CA key is
// kept where the node lacks it.
func (n *Node) followSecrets() {
	store := n.store.Load()
	if store == nil {
		return
	}
	sec := registry.NewSecrets(n.client)
	n.secrets.Store(sec)
	if _, err := os.Stat(n.files().ACLTokenFile()); err == nil {
		n.acls.publishing.Store(true)
	}
	n.goBackground(func(ctx context.Context) {
		// Publish first: a restored node's own secrets replace the
		// snapshot's before anything follows them.
		n.publishSecrets(ctx, sec, store)
		n.followSecretsFrom(sec, store)
	})
}

func (n *Node) followSecretsFrom(sec *registry.Secrets, store *secure.Store) {
	n.goBackground(func(ctx context.Context) {
		sec.Follow(ctx, secretJoin, func(v []byte) {
			s, err := decodeSecret(v)
			if err != nil {
				n.logger.Warn("ignoring the registry's join secret", "err", err)
				return
			}
			old := n.token.Load()
			if old != nil && old.Secret.Equal(s) && old.CA == store.CA().Hash() {
				return
			}
			tok := secure.Token{CA: store.CA().Hash(), Secret: s}
			if err := n.files().SaveToken(tok); err != nil {
				n.logger.Warn("could not update the join token file", "err", err)
				return
			}
			n.token.Store(&tok)
			if old != nil {
				n.logger.Info("the cluster's join token was rotated; the token file is updated", "file", n.files().TokenFile())
			}
		})
	})
	n.goBackground(func(ctx context.Context) {
		sec.Follow(ctx, secretKeyring, func(v []byte) {
			var kr secure.Keyring
			if err := json.Unmarshal(v, &kr); err != nil {
				n.logger.Warn("ignoring the registry's gossip keyring", "err", err)
				return
			}
			n.applyKeyring(kr)
		})
	})
	if store.CA().Key == nil {
		n.goBackground(func(ctx context.Context) {
			for ctx.Err() == nil {
				if _, err := n.fetchCAKey(ctx); err == nil {
					return
				}
				_ = sleep(ctx, 5*time.Second)
			}
		})
	}
}

// publishSecrets writes, where the registry has none yet, the CA key, the
// join secret and the keyring this node holds (all of them, replacing the
// snapshot's, on a node restored from a snapshot). It retries until each is
// in the registry or ctx is done.
func (n *Node) publishSecrets(ctx context.Context, sec *registry.Secrets, store *secure.Store) {
	type secret struct {
		name string
		v    []byte
	}
	var vals []secret
	if ca := store.CA(); ca.Key != nil {
		if k, err := secure.KeyPEM(ca.Key); err == nil {
			vals = append(vals, secret{secretCAKey, k})
		}
	}
	if t := n.token.Load(); t != nil {
		vals = append(vals, secret{secretJoin, []byte(hex.EncodeToString(t.Secret[:]))})
	}
	if kr := n.keyring.Load(); kr != nil {
		if b, err := json.Marshal(kr); err == nil {
			vals = append(vals, secret{secretKeyring, b})
		}
	}
	marker := filepath.Join(n.cfg.DataDir, restoredMarker)
	_, err := os.Stat(marker)
	replace := err == nil
	func() {
		for _, v := range vals {
			for {
				var created bool
				var err error
				if replace {
					created, err = sec.Put(ctx, v.name, v.v, 0)
				} else {
					created, err = sec.Create(ctx, v.name, v.v)
				}
				if err == nil {
					if created {
						n.logger.Info("published to the registry", "what", v.name)
					}
					break
				}
				if sleep(ctx, time.Second) != nil {
					return
				}
			}
		}
		n.publishManagementToken(ctx, replace)
		if replace {
			if err := os.Remove(marker); err != nil {
				n.logger.Warn("could not remove the restore marker", "err", err)
			}
		}
	}()
}

// fetchCAKey reads the CA key from the registry, checks it against the CA
// certificate, keeps it in the data dir and the store, and returns the CA.
func (n *Node) fetchCAKey(ctx context.Context) (*secure.CA, error) {
	store := n.store.Load()
	sec := n.secrets.Load()
	if store == nil || sec == nil {
		return nil, errors.New("this node does not hold the CA key and cannot read the registry yet")
	}
	if ca := store.CA(); ca.Key != nil {
		return ca, nil
	}
	v, _, err := sec.Get(ctx, secretCAKey)
	if err != nil {
		return nil, fmt.Errorf("the CA key: %w", err)
	}
	key, err := secure.ParseKeyPEM(v)
	if err != nil {
		return nil, fmt.Errorf("the registry's CA key: %w", err)
	}
	if err := store.AddCAKey(key); err != nil {
		return nil, fmt.Errorf("the registry's CA key: %w", err)
	}
	if err := n.files().SaveCA(store.CA(), true); err != nil {
		n.logger.Warn("could not keep the CA key in the data dir", "err", err)
	}
	return store.CA(), nil
}

// applyKeyring installs kr in gossip and keeps it in the data dir.
func (n *Node) applyKeyring(kr secure.Keyring) {
	if err := kr.Validate(); err != nil {
		n.logger.Warn("ignoring an invalid gossip keyring", "err", err)
		return
	}
	if cur := n.keyring.Load(); cur != nil && keyringEqual(*cur, kr) {
		return
	}
	if err := n.gossip.SetKeyring(kr.Primary, kr.Keys); err != nil {
		n.logger.Warn("could not install the gossip keyring", "err", err)
		return
	}
	if err := n.files().SaveKeyring(kr); err != nil {
		n.logger.Warn("could not keep the gossip keyring in the data dir", "err", err)
	}
	n.keyring.Store(&kr)
	n.logger.Info("installed the cluster's gossip keyring", "keys", len(kr.Keys), "primary", keyID(kr.Primary))
}

func keyringEqual(a, b secure.Keyring) bool {
	if string(a.Primary) != string(b.Primary) || len(a.Keys) != len(b.Keys) {
		return false
	}
	for i := range a.Keys {
		if string(a.Keys[i]) != string(b.Keys[i]) {
			return false
		}
	}
	return true
}

// keyID names a gossip key in logs and the API without revealing it.
func keyID(k []byte) string { return secure.KeyID(k) }

// renewCertificates renews the node's certificate once two thirds of its
// lifetime have passed, signing the same key with the CA (from the data
// dir, or the registry), and reloads it: etcd and the API use it from their
// next connection on, with no restart. It checks every minute (more often
// for short lifetimes) until ctx is done.
func (n *Node) renewCertificates(ctx context.Context) {
	store := n.store.Load()
	if store == nil {
		return
	}
	for {
		leaf := store.Leaf()
		every := min(time.Minute, max(time.Second, leaf.NotAfter.Sub(leaf.NotBefore)/20))
		if secure.RenewDue(leaf, time.Now()) {
			if err := n.renew(ctx, store); err != nil {
				n.logger.Warn("could not renew this node's certificate; retrying", "expires", leaf.NotAfter.UTC().Format(time.RFC3339), "err", err)
			}
		}
		if sleep(ctx, every) != nil {
			return
		}
	}
}

func (n *Node) renew(ctx context.Context, store *secure.Store) error {
	ca, err := authority{n}.SigningCA(ctx)
	if err != nil {
		return err
	}
	cur := store.Certificate()
	key, ok := cur.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("the node key (%T) cannot sign", cur.PrivateKey)
	}
	cert, err := ca.Sign(key.Public(), n.certRequest())
	if err != nil {
		return err
	}
	kp, err := secure.KeyPEM(key)
	if err != nil {
		return err
	}
	if err := n.files().SaveNodeCert(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), kp); err != nil {
		return err
	}
	if err := store.Reload(); err != nil {
		return err
	}
	n.renewals.Add(1)
	n.logger.Info("renewed this node's certificate", "expires", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// RotateToken replaces the cluster's join secret in the registry: from
// then on every node's join server refuses tokens with the old one, and
// every node's token file is rewritten. Running nodes are not affected.
func (n *Node) RotateToken(ctx context.Context) (secure.Token, error) {
	store, sec := n.store.Load(), n.secrets.Load()
	if store == nil || sec == nil {
		return secure.Token{}, fmt.Errorf("%w: this node cannot reach the registry's secrets yet", registry.ErrUnavailable)
	}
	s, err := secure.NewSecret()
	if err != nil {
		return secure.Token{}, err
	}
	if _, err := sec.Put(ctx, secretJoin, []byte(hex.EncodeToString(s[:])), 0); err != nil {
		return secure.Token{}, err
	}
	tok := secure.Token{CA: store.CA().Hash(), Secret: s}
	if err := n.files().SaveToken(tok); err != nil {
		n.logger.Warn("could not update the join token file", "err", err)
	}
	n.token.Store(&tok)
	n.logger.Info("rotated the cluster's join token: tokens with the old secret no longer admit nodes")
	return tok, nil
}

// Keyring errors.
var (
	// ErrKeyring: a keyring change that cannot be made (removing the primary
	// key, using a key that is not installed).
	ErrKeyring = errors.New("keyring change refused")
)

// Keyring is the registry's gossip keyring (the cluster's) and this node's.
func (n *Node) Keyring(ctx context.Context) (cluster, local secure.Keyring, err error) {
	if kr := n.keyring.Load(); kr != nil {
		local = *kr
	}
	sec := n.secrets.Load()
	if sec == nil {
		return cluster, local, fmt.Errorf("%w: this node cannot reach the registry's secrets yet", registry.ErrUnavailable)
	}
	v, _, err := sec.Get(ctx, secretKeyring)
	if err != nil {
		return cluster, local, err
	}
	if err := json.Unmarshal(v, &cluster); err != nil {
		return cluster, local, fmt.Errorf("the registry's gossip keyring: %w", err)
	}
	return cluster, local, nil
}

// ChangeKeyring installs, uses (makes primary) or removes key in the
// cluster's keyring, kept in the registry: every node installs the result
// from there, and a node that was down meanwhile (or joins later) catches
// up from there on its return instead of being locked out (consul#719).
// A rotation is install, then use once every node has it, then remove of
// the old key.
func (n *Node) ChangeKeyring(ctx context.Context, op string, key []byte) (secure.Keyring, error) {
	sec := n.secrets.Load()
	if sec == nil {
		return secure.Keyring{}, fmt.Errorf("%w: this node cannot reach the registry's secrets yet", registry.ErrUnavailable)
	}
	for attempt := 0; ; attempt++ {
		v, rev, err := sec.Get(ctx, secretKeyring)
		if err != nil {
			return secure.Keyring{}, err
		}
		var kr secure.Keyring
		if err := json.Unmarshal(v, &kr); err != nil {
			return secure.Keyring{}, fmt.Errorf("the registry's gossip keyring: %w", err)
		}
		next, err := changedKeyring(kr, op, key)
		if err != nil {
			return secure.Keyring{}, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return secure.Keyring{}, err
		}
		ok, err := sec.Put(ctx, secretKeyring, b, rev)
		if err != nil {
			return secure.Keyring{}, err
		}
		if ok {
			n.logger.Info("changed the cluster's gossip keyring", "op", op, "key", keyID(key), "primary", keyID(next.Primary), "keys", len(next.Keys))
			return next, nil
		}
		if attempt == 5 {
			return secure.Keyring{}, fmt.Errorf("%w: the keyring kept changing under this request", registry.ErrUnavailable)
		}
	}
}

// changedKeyring is kr after op on key: the pure decision.
func changedKeyring(kr secure.Keyring, op string, key []byte) (secure.Keyring, error) {
	has := slices.ContainsFunc(kr.Keys, func(k []byte) bool { return bytes.Equal(k, key) })
	next := secure.Keyring{Primary: kr.Primary, Keys: slices.Clone(kr.Keys)}
	switch op {
	case "install":
		if !has {
			next.Keys = append(next.Keys, key)
		}
	case "use":
		if !has {
			return kr, fmt.Errorf("%w: key %s is not installed; install it first (and wait for every node to have it)", ErrKeyring, keyID(key))
		}
		next.Primary = key
	case "remove":
		if bytes.Equal(key, kr.Primary) {
			return kr, fmt.Errorf("%w: key %s is the primary key; use another key first", ErrKeyring, keyID(key))
		}
		if !has {
			return kr, fmt.Errorf("%w: key %s is not installed", ErrKeyring, keyID(key))
		}
		next.Keys = slices.DeleteFunc(next.Keys, func(k []byte) bool { return bytes.Equal(k, key) })
	default:
		return kr, fmt.Errorf("%w: op %q: want install, use or remove", ErrKeyring, op)
	}
	if err := next.Validate(); err != nil {
		return kr, fmt.Errorf("%w: %w", ErrKeyring, err)
	}
	return next, nil
}
