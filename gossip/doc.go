// Package gossip wraps hashicorp/memberlist for herd: joining through
// --join addresses with per-address reasons for failure, each node's
// metadata (its ID, ports, registry URLs and role), and a live view of every
// node's status (alive, suspect, dead, left) that the gateway and the API
// read from memory.
//
// memberlist does not expose its suspicion state, so suspect is derived
// here from the one signal memberlist's own probes rely on: a node that has
// sent nothing for longer than its probe period plus a margin is suspect
// until memberlist declares it dead or it is heard again. A node that says it
// is leaving (through its metadata) before it goes is reported as left, not
// dead.
//
// Gossip is encrypted and authenticated with memberlist's keyring
// (Config.Keys, SetKeyring); messages no key decrypts are dropped and
// counted (Undecryptable). The gossip TCP port also carries herd's join
// exchange: a connection that opens with a TLS record is handed to
// JoinListener instead of memberlist, so `--join ADDR` names one address
// for both.
//
// It knows nothing of etcd, the gateway, the services or what the join
// exchange says.
package gossip
