package gossip

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"
)

// DefaultPort is the gossip port (TCP and UDP).
const DefaultPort = 7946

// Config configures a node's gossip.
type Config struct {
	// Name is the node name, unique in the cluster.
	Name string
	// BindIP is the IP the gossip listeners (TCP and UDP) bind.
	BindIP string
	// BindPort is the gossip port (default 7946).
	BindPort int
	// AdvertiseIP is the IP peers use; empty means BindIP.
	AdvertiseIP string
	// ProbeInterval is how often memberlist probes one other node (default
	// 1s, memberlist's LAN profile).
	ProbeInterval time.Duration
	// SuspectMargin is added to a node's probe period before silence from
	// it makes it suspect (default 1s).
	SuspectMargin time.Duration
	// ReapAfter is how long dead and left nodes stay in the view (default
	// 1h); zero means memberlist's own default handling only.
	ReapAfter time.Duration
	// ReconnectInterval is how often the node tries to rejoin one node it
	// sees dead (default 2s; negative: never). memberlist never contacts a
	// dead node again by itself, so without this two sides of a healed
	// partition would each go on seeing the other dead.
	ReconnectInterval time.Duration
	// Keys is the gossip keyring: with keys, every message is encrypted
	// with PrimaryKey (AES-GCM) and anything that none of Keys decrypts is
	// dropped; without, gossip is plaintext (herd's --insecure only). Keys
	// are 16, 24 or 32 bytes.
	Keys       [][]byte
	PrimaryKey []byte
	// Logger receives gossip and memberlist log lines.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults for a node named name.
func DefaultConfig(name string) Config {
	return Config{
		Name:          name,
		BindIP:        "127.0.0.1",
		BindPort:      DefaultPort,
		ProbeInterval: time.Second,
		SuspectMargin: time.Second,
		ReapAfter:     time.Hour,

		ReconnectInterval: 2 * time.Second,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("gossip: node name is empty")
	case net.ParseIP(c.BindIP) == nil:
		return fmt.Errorf("gossip: bind IP %q is not an IP address", c.BindIP)
	case c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil:
		return fmt.Errorf("gossip: advertise IP %q is not an IP address", c.AdvertiseIP)
	case c.BindPort < 1 || c.BindPort > 65535:
		return fmt.Errorf("gossip: port %d is not in 1-65535", c.BindPort)
	case c.ProbeInterval < 10*time.Millisecond:
		return fmt.Errorf("gossip: probe interval %s is too short", c.ProbeInterval)
	}
	for i, k := range c.Keys {
		if len(k) != 16 && len(k) != 24 && len(k) != 32 {
			return fmt.Errorf("gossip: key %d is %d bytes; it must be 16, 24 or 32", i+1, len(k))
		}
	}
	if len(c.Keys) > 0 && !slices.ContainsFunc(c.Keys, func(k []byte) bool { return bytes.Equal(k, c.PrimaryKey) }) {
		return errors.New("gossip: the primary key is not one of the keys")
	}
	return nil
}

func (c *Config) advertise() string {
	if c.AdvertiseIP != "" {
		return c.AdvertiseIP
	}
	return c.BindIP
}
