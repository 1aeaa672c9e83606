// Package secure owns herd's cluster identity: the cluster CA, the join
// token, node and client certificates, the gossip keyring's on-disk form,
// the files in a data dir that hold them (all 0600), the TLS configurations
// every control-plane link uses, and the join exchange through which a new
// node proves it holds the token and receives its certificate.
//
// The trust model is k3s's, made simpler. The node that creates a cluster
// makes a CA, a join secret and a gossip key. The join token
// ("herd1.<sha256 of the CA certificate>.<secret>") pins the CA and carries
// the secret. A joiner opens TLS to a node of the cluster, checks the CA the
// node presents against the pin before it sends anything, proves that it
// holds the secret with an HMAC bound to that TLS session (the secret itself
// never crosses the wire), and receives a certificate for its own key and
// the gossip keyring. A token made before the cluster exists (`herd token
// generate`, for --bootstrap-expect) pins no CA: the joiner then makes the
// node prove it holds the secret too before it takes the CA.
//
// It knows nothing of etcd, gossip or the agent API: the node wires the
// configurations it returns into each of them, and hands the join server
// what it needs through the small Authority interface.
package secure
