package gossip

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strconv"
	"testing"
	"time"
)

func startKeyed(t *testing.T, name string, key []byte) *Gossip {
	t.Helper()
	cfg := DefaultConfig(name)
	cfg.BindPort = freeGossipPort(t)
	cfg.ProbeInterval = 200 * time.Millisecond
	cfg.SuspectMargin = 300 * time.Millisecond
	if key != nil {
		cfg.Keys, cfg.PrimaryKey = [][]byte{key}, key
	}
	g, err := New(cfg, Meta{ID: name + "-id"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// Nodes with the same key gossip; a node with another key, or none, is
// dropped and counted, and never enters the view.
func TestKeyringKeepsStrangersOut(t *testing.T) {
	k1 := bytes.Repeat([]byte{1}, 32)
	a, b := startKeyed(t, "a", k1), startKeyed(t, "b", k1)
	if _, err := b.Join(context.Background(), []string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, a, "b", StatusAlive, 5*time.Second)
	for _, stranger := range []*Gossip{startKeyed(t, "plain", nil), startKeyed(t, "other", bytes.Repeat([]byte{2}, 32))} {
		before := a.Undecryptable()
		if _, err := stranger.Join(context.Background(), []string{a.LocalAddr()}); err == nil {
			t.Fatalf("%s joined a keyed pool", stranger.cfg.Name)
		}
		if a.NodeStatus(stranger.cfg.Name) != "" {
			t.Fatalf("%s is in the view", stranger.cfg.Name)
		}
		if a.Undecryptable() <= before {
			t.Fatalf("%s's messages were not counted as undecryptable", stranger.cfg.Name)
		}
	}
}

// A rotation: install the new key everywhere, use it, remove the old one;
// the pool keeps talking throughout.
func TestSetKeyringRotates(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{3}, 32)
	a, b := startKeyed(t, "a", k1), startKeyed(t, "b", k1)
	if _, err := b.Join(context.Background(), []string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, a, "b", StatusAlive, 5*time.Second)
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeyring(k1, [][]byte{k1, k2}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeyring(k2, [][]byte{k1, k2}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeyring(k2, [][]byte{k2}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetKeyring(k1, [][]byte{k2}); err == nil {
		t.Fatal("a primary outside the keys was accepted")
	}
	primary, keys, _ := a.Keyring()
	if !bytes.Equal(primary, k2) || len(keys) != 1 {
		t.Fatalf("keyring after rotation: %d keys", len(keys))
	}
	// A node that only has the old key is now a stranger.
	old := startKeyed(t, "old", k1)
	if _, err := old.Join(context.Background(), []string{a.LocalAddr()}); err == nil {
		t.Fatal("a node with the retired key joined")
	}
	waitStatus(t, b, "a", StatusAlive, 5*time.Second)
}

// Connections to the gossip port that open with TLS reach JoinListener;
// memberlist's own keep working beside them.
func TestJoinListenerSharesThePort(t *testing.T) {
	k := bytes.Repeat([]byte{1}, 32)
	a, b := startKeyed(t, "a", k), startKeyed(t, "b", k)
	ln := a.JoinListener()
	cert := selfSigned(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				_, _ = io.Copy(tc, tc) // echo
			}()
		}
	}()
	c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(a.cfg.BindPort)), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS to the gossip port: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo through the join listener: %q %v", buf, err)
	}
	if _, err := b.Join(context.Background(), []string{a.LocalAddr()}); err != nil {
		t.Fatalf("gossip join beside a join connection: %v", err)
	}
	waitStatus(t, a, "b", StatusAlive, 5*time.Second)
	// A silent connection is closed after the sniff timeout, holding up
	// nothing else; Close does not wait for it.
	silent, err := net.Dial("tcp", a.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close waited %s for a silent connection", d)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("the join listener accepts after Close")
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
