package main

import (
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/spf13/cobra"
)

func newACLCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "acl",
		Short: "Access control of the agent API: API tokens and the management token",
		Long: `Access control of the agent API. Every /v1 request needs an API token (HERD_TOKEN, --token-file)
or a certificate of the cluster (--data-dir of a node on this machine). Policies:

  read              members, services, instances, metrics
  service:PREFIX    register and deregister instances of services whose names start with PREFIX; and read
  operator          everything: leave, force-leave, snapshot, keyring, join token rotation, API tokens`,
	}
	token := &cobra.Command{Use: "token", Short: "Create, list and revoke API tokens"}
	token.AddCommand(newACLTokenCreateCmd(), newACLTokenListCmd(), newACLTokenRevokeCmd())
	cmd.AddCommand(token, newACLBootstrapCmd(), newACLWhoAmICmd())
	return cmd
}

func newACLTokenCreateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create --name NAME --policy POLICY [--policy POLICY...] [--ttl DURATION]",
		Short: "Make an API token; its secret is printed this once",
		Args:  cobra.NoArgs,
	}
	o := apiFlag(cmd)
	var req api.ACLTokenRequest
	var ttl time.Duration
	var quiet bool
	cmd.Flags().StringVar(&req.Name, "name", "", "the token's name (a DNS label, unique in the cluster; logs name the token by it)")
	cmd.Flags().StringSliceVar(&req.Policies, "policy", nil, "a policy: read, service:PREFIX or operator (repeat or comma-separate for more)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token is valid (e.g. 24h; default: until revoked)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the secret")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if req.Name == "" {
			return fmt.Errorf("--name is needed")
		}
		if len(req.Policies) == 0 {
			return fmt.Errorf("--policy is needed: read, service:PREFIX or operator")
		}
		if ttl < 0 {
			return fmt.Errorf("--ttl %s is negative", ttl)
		}
		if ttl > 0 {
			req.TTL = ttl.String()
		}
		var t api.ACLToken
		if err := callAPI(http.MethodPost, o, "/v1/acl/tokens", req, &t); err != nil {
			return err
		}
		if quiet {
			fmt.Fprintln(cmd.OutOrStdout(), t.Secret)
			return nil
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "name:\t%s\npolicies:\t%s\nexpires:\t%s\nsecret:\t%s\n", t.Name, strings.Join(t.Policies, ", "), expires(t.ExpiresAt), t.Secret)
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(cmd.ErrOrStderr(), "\nThe secret is shown only now: the cluster keeps its hash. Use it as HERD_TOKEN, or as Authorization: Bearer <secret>.")
		return nil
	}
	return cmd
}

func expires(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format(time.RFC3339)
}

func newACLTokenListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the API tokens (names, policies, expiry; never secrets)",
		Args:  cobra.NoArgs,
	}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var resp api.ACLTokensResponse
		if err := getJSON(o, "/v1/acl/tokens", &resp); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPOLICIES\tCREATED\tEXPIRES\tCREATED BY")
		for _, t := range resp.Tokens {
			exp := expires(t.ExpiresAt)
			if t.Expired {
				exp += " (expired)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, strings.Join(t.Policies, ","), t.CreatedAt.Local().Format(time.RFC3339), exp, dash(t.CreatedBy))
		}
		return tw.Flush()
	}
	return cmd
}

func newACLTokenRevokeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an API token: every node refuses it within a second",
		Args:  cobra.ExactArgs(1),
	}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if !api.ValidName(args[0]) {
			return fmt.Errorf("token name %q is not a DNS label", args[0])
		}
		if err := callAPI(http.MethodDelete, o, "/v1/acl/tokens/"+args[0], nil, &map[string]string{}); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
		return nil
	}
	return cmd
}

func newACLBootstrapCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bootstrap --data-dir DIR [--reset]",
		Short: "Make the cluster's management token (with --reset: replace a lost one)",
		Long: `Make the cluster's management token (policy operator), print it and write it 0600 to DIR/acl-token.

The node that creates a cluster does this by itself; run it by hand on a cluster made before access
control existed. With --reset it replaces the management token ("bootstrap"): the old one stops
working on every node at once; tokens made with 'herd acl token create' are not touched. It needs
the data dir of a node on this machine: the node's certificate is the proof (whoever can read the
data dir owns the node anyway), and the new token is written there.`,
		Args: cobra.NoArgs,
	}
	o := apiFlag(cmd)
	var reset bool
	cmd.Flags().BoolVar(&reset, "reset", false, "replace the management token even though the cluster has one")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		files, err := needDataDir(o.dataDir)
		if err != nil {
			return err
		}
		// The data dir's certificate is the proof; a token in the
		// environment (often the lost or a narrower one) would override it.
		o.token, o.tokenFile = "", ""
		var t api.ACLToken
		if err := callAPI(http.MethodPost, o, "/v1/acl/bootstrap", api.ACLBootstrapRequest{Reset: reset}, &t); err != nil {
			return err
		}
		if err := files.SaveACLToken(t.Secret); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: could not keep the token in %s: %v\n", files.ACLTokenFile(), err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "export HERD_TOKEN=%s\n", t.Secret)
		fmt.Fprintf(cmd.ErrOrStderr(), "\nThe management token (policy operator) is kept in %s (mode 0600).\n", files.ACLTokenFile())
		return nil
	}
	return cmd
}

func newACLWhoAmICmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show whom the agent API takes this command's token or certificate for",
		Args:  cobra.NoArgs,
	}
	o := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var who api.WhoAmI
		if err := getJSON(o, "/v1/acl/whoami", &who); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s (%s): %s; expires %s\n", who.Name, who.Kind, strings.Join(who.Policies, ", "), expires(who.Expires))
		return nil
	}
	return cmd
}
