package main

import (
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/secure"
	"github.com/spf13/cobra"
)

// dataDirFlag adds --data-dir (env HERD_DATA_DIR) for the commands that
// read a node's data dir on this machine.
func dataDirFlag(cmd *cobra.Command) *string {
	v := new(string)
	cmd.Flags().StringVar(v, "data-dir", "", "data dir of a node on this machine")
	return v
}

// needDataDir checks that dir was given and holds a secured node.
func needDataDir(dir string) (secure.Files, error) {
	if dir == "" {
		var found []string
		for _, d := range defaultDataDirs() {
			if _, err := os.Stat(d); err == nil {
				found = append(found, d)
			}
		}
		hint := ""
		if len(found) > 0 {
			hint = " (found here: " + strings.Join(found, ", ") + ")"
		}
		return secure.Files{}, errors.New("--data-dir is needed: the data dir of a node on this machine" + hint)
	}
	f := secure.Files{Dir: dir}
	if !f.HasIdentity() {
		return f, fmt.Errorf("--data-dir %s holds no cluster identity (is it a node's data dir? a node started with --insecure has none)", dir)
	}
	return f, nil
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Show, generate or rotate the cluster's join token",
	}
	cmd.AddCommand(newTokenShowCmd(), newTokenGenerateCmd(), newTokenRotateCmd())
	return cmd
}

func newTokenShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the join token kept in a node's data dir",
		Args:  cobra.NoArgs,
	}
	dir := dataDirFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		f, err := needDataDir(*dir)
		if err != nil {
			return err
		}
		tok, err := f.LoadToken()
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), tok.String())
		return nil
	}
	return cmd
}

func newTokenGenerateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "generate",
		Short: "Print a new join token for a cluster formed with --bootstrap-expect",
		Long: `Print a new join token that pins no CA yet, for forming a cluster with --bootstrap-expect: start
every founder with the same --join-token. The first founder by name creates the cluster's CA; the
others are admitted by it, checking that it holds the token's secret before they take its CA.
Afterwards, 'herd token show --data-dir DIR' prints the full token (with the CA pinned) for new nodes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := secure.NewSecret()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), secure.Token{Secret: s}.String())
			return nil
		},
	}
}

func newTokenRotateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the cluster's join secret: old tokens stop working for new joins",
		Long: `Replace the cluster's join secret and print the new token. Tokens with the old secret stop working
for new joins at once, on every node; running nodes are not affected, and every node's token file
is updated. Needs an operator token (HERD_TOKEN) or the certificate of a node on this machine
(--data-dir).`,
		Args: cobra.NoArgs,
	}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if o.token == "" && o.tokenFile == "" {
			if _, err := needDataDir(o.dataDir); err != nil {
				return fmt.Errorf("%w, or an operator token (HERD_TOKEN, --token-file)", err)
			}
		}
		var out api.TokenResponse
		if err := callAPI("POST", o, "/v1/token/rotate", nil, &out); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), out.Token)
		return nil
	}
	return cmd
}

func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Certificates issued by the cluster CA",
	}
	certCmd := &cobra.Command{Use: "cert", Short: "Issue certificates"}
	certCmd.AddCommand(newTLSCertCreateCmd())
	cmd.AddCommand(certCmd)
	return cmd
}

func newTLSCertCreateCmd() *cobra.Command {
	var (
		client   bool
		name     string
		out      string
		validity time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Issue a client certificate from a node's data dir (for etcdctl and other registry clients)",
		Long: `Issue a client certificate signed by the cluster CA, with the CA key kept in a node's data dir.
OUTDIR gets ca.pem, NAME.pem and NAME-key.pem (0600). Use them with etcdctl:

  etcdctl --endpoints https://NODE:2379 --cacert OUTDIR/ca.pem --cert OUTDIR/NAME.pem --key OUTDIR/NAME-key.pem member list

Whoever holds the files can read and write the registry: keep them as you keep the data dir.`,
		Args: cobra.NoArgs,
	}
	dir := dataDirFlag(cmd)
	f := cmd.Flags()
	f.BoolVar(&client, "client", false, "issue a client certificate (the only kind this command issues)")
	f.StringVar(&name, "name", "", "the certificate's name (a DNS label)")
	f.StringVar(&out, "out", ".", "directory to write the files to")
	f.DurationVar(&validity, "validity", secure.DefaultCertValidity, "how long the certificate is valid")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if !client {
			return errors.New("--client is required: node certificates are issued by the join exchange, not by hand")
		}
		if !api.ValidName(name) {
			return fmt.Errorf("--name %q is not a DNS label", name)
		}
		if validity < time.Minute {
			return fmt.Errorf("--validity %s is under a minute", validity)
		}
		files, err := needDataDir(*dir)
		if err != nil {
			return err
		}
		ca, err := files.LoadCA()
		if err != nil {
			return err
		}
		if ca.Key == nil {
			return fmt.Errorf("--data-dir %s does not hold the CA key yet (a running node fetches it from the registry within seconds of joining); use the data dir of the node that created the cluster, or try again", *dir)
		}
		key, err := secure.NewKey()
		if err != nil {
			return err
		}
		cert, err := ca.Sign(key.Public(), secure.CertRequest{Name: name, Client: true, Validity: validity})
		if err != nil {
			return err
		}
		kp, err := secure.KeyPEM(key)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(out, 0o700); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		for _, w := range []struct {
			file string
			b    []byte
		}{
			{"ca.pem", ca.CertPEM()},
			{name + ".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})},
			{name + "-key.pem", kp},
		} {
			if err := secure.WriteSecretFile(filepath.Join(out, w.file), w.b); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s, %s and %s (valid until %s)\n",
			filepath.Join(out, "ca.pem"), filepath.Join(out, name+".pem"), filepath.Join(out, name+"-key.pem"), cert.NotAfter.UTC().Format(time.RFC3339))
		return nil
	}
	return cmd
}

func newKeyringCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keyring",
		Short: "List and rotate the gossip encryption keys, cluster-wide",
		Long: `The gossip keyring lives in the registry: every node installs it from there, and a node that was
down during a rotation (or joins later) catches up on its return. A rotation:

  herd keyring generate                 # a new key (32 random bytes, base64)
  herd keyring install KEY --data-dir DIR
  herd keyring use KEY --data-dir DIR   # once 'list' shows every node has it
  herd keyring remove OLDKEY --data-dir DIR

Keys are shown by ID (the first 8 bytes of their SHA-256), never in clear.`,
	}
	cmd.AddCommand(newKeyringListCmd(), newKeyringGenerateCmd())
	for _, op := range []struct{ name, short string }{
		{"install", "Add KEY to every node's keyring (it decrypts; it does not encrypt yet)"},
		{"use", "Make KEY the primary key, the one every node encrypts with"},
		{"remove", "Remove KEY from every node's keyring (not the primary)"},
	} {
		cmd.AddCommand(newKeyringOpCmd(op.name, op.short))
	}
	return cmd
}

func printKeyring(cmd *cobra.Command, kr api.KeyringResponse) {
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "cluster keyring (the registry's):")
	for _, k := range kr.Keys {
		mark := ""
		if k == kr.Primary {
			mark = "  (primary)"
		}
		fmt.Fprintf(out, "  %s%s\n", k, mark)
	}
	if kr.Local != nil {
		fmt.Fprintf(out, "this node's: primary %s, %d key(s)\n", kr.Local.Primary, len(kr.Local.Keys))
	}
}

func newKeyringListCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "Show the cluster's keyring and the node's, by key ID", Args: cobra.NoArgs}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var kr api.KeyringResponse
		if err := getJSON(o, "/v1/keyring", &kr); err != nil {
			return err
		}
		printKeyring(cmd, kr)
		return nil
	}
	return cmd
}

func newKeyringGenerateCmd() *cobra.Command {
	return &cobra.Command{
		Use: "generate", Short: "Print a new random gossip key", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			k := make([]byte, secure.GossipKeySize)
			if _, err := rand.Read(k); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), secure.EncodeGossipKey(k))
			return nil
		},
	}
}

func newKeyringOpCmd(op, short string) *cobra.Command {
	cmd := &cobra.Command{Use: op + " KEY", Short: short, Args: cobra.ExactArgs(1)}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if _, err := secure.DecodeGossipKey(args[0]); err != nil {
			return fmt.Errorf("KEY: %w", err)
		}
		var kr api.KeyringResponse
		if err := callAPI("POST", o, "/v1/keyring", api.KeyringRequest{Op: op, Key: args[0]}, &kr); err != nil {
			return err
		}
		printKeyring(cmd, kr)
		return nil
	}
	return cmd
}
