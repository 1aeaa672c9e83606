package gossip

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Meta is what a node tells every other node about itself. It travels in
// memberlist's node metadata, which is limited to 512 bytes.
type Meta struct {
	// Herd marks the metadata as herd's; a gossip peer without it is not a
	// herd node.
	Herd int `json:"herd"`
	// ID is the node's identity, kept in its data dir.
	ID string `json:"id"`
	// Version is the herd version the node runs.
	Version string `json:"v,omitempty"`
	// ClientURL and PeerURL are the node's registry member URLs; empty when
	// the node runs no member.
	ClientURL string `json:"c,omitempty"`
	PeerURL   string `json:"p,omitempty"`
	// Role is the node's registry role (voter, learner, none).
	Role string `json:"r,omitempty"`
	// GatewayPort, APIPort and ServicePort are the node's HTTP ports.
	GatewayPort int `json:"gw,omitempty"`
	APIPort     int `json:"api,omitempty"`
	ServicePort int `json:"svc,omitempty"`
	// Leaving is set just before a graceful leave, so peers report the node
	// as left rather than dead.
	Leaving bool `json:"l,omitempty"`
	// Expect is the node's --bootstrap-expect (0: not set).
	Expect int `json:"e,omitempty"`
	// Proposal identifies the initial cluster a --bootstrap-expect node
	// proposes (or formed): a hash of its members' names and peer URLs.
	Proposal string `json:"bp,omitempty"`
	// Maint says what of the node is in maintenance: "node", its services'
	// names, or their count ("" when nothing is).
	Maint string `json:"m,omitempty"`
}

// metaVersion is the value of Meta.Herd this build writes.
const metaVersion = 1

// maxMetaSize is memberlist's limit on node metadata.
const maxMetaSize = 512

// ErrNotHerd: a gossip peer whose metadata is not herd's.
var ErrNotHerd = errors.New("not a herd node")

func (m Meta) encode() ([]byte, error) {
	m.Herd = metaVersion
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("node metadata is %d bytes, over memberlist's %d", len(b), maxMetaSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, ErrNotHerd
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Herd == 0 {
		return m, ErrNotHerd
	}
	return m, nil
}
