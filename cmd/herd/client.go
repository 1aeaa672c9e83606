package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/secure"
	"github.com/spf13/cobra"
)

// apiOpts is how a command reaches the agent API: its URL, what it trusts
// (the cluster CA), the API token it sends, and the certificate it
// presents (a node's, from --data-dir: the API takes it for an operator).
type apiOpts struct {
	base      string
	caFile    string
	dataDir   string
	token     string
	tokenFile string
}

// apiFlag adds --api, --ca-file, --data-dir, --token and --token-file (env
// HERD_API, HERD_CA_FILE, HERD_DATA_DIR, HERD_TOKEN, HERD_TOKEN_FILE) to
// cmd.
func apiFlag(cmd *cobra.Command) *apiOpts {
	o := &apiOpts{}
	f := cmd.Flags()
	f.StringVar(&o.base, "api", "https://127.0.0.1:8500", "agent API address of any node")
	f.StringVar(&o.caFile, "ca-file", "", "the cluster CA certificate (default: tls/ca.pem of --data-dir, of ./data/*, or of /var/lib/herd)")
	f.StringVar(&o.dataDir, "data-dir", "", "data dir of a node on this machine: its CA is trusted and its certificate presented (the API grants it operator)")
	f.StringVar(&o.token, "token", "", "API token (herd-acl1....); prefer HERD_TOKEN or --token-file, which stay out of the process list")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token")
	return o
}

// authorize adds the API token, if the command has one, to req. Never over
// plain HTTP: only an --insecure cluster speaks it, and it has no access
// control to need a token for.
func (o *apiOpts) authorize(req *http.Request) error {
	if req.URL.Scheme != "https" {
		return nil
	}
	tok := o.token
	if o.tokenFile != "" {
		if tok != "" {
			return errors.New("--token and --token-file (or HERD_TOKEN and HERD_TOKEN_FILE): give one")
		}
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		if tok = strings.TrimSpace(string(b)); tok == "" {
			return fmt.Errorf("--token-file %s is empty", o.tokenFile)
		}
	}
	if tok = strings.TrimSpace(tok); tok == "" {
		return nil
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return errors.New("the API token holds white space or a line break: it is not a herd API token")
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}

// request is a request to the API at path, with the command's token.
func (o *apiOpts) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(o.base, "/")+path, body)
	if err != nil {
		return nil, fmt.Errorf("--api %q: %w", o.base, err)
	}
	return req, o.authorize(req)
}

// defaultDataDirs are where a node's data dir is looked for when none is
// given: make cluster's and the systemd unit's.
func defaultDataDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join("data", "*"))
	var out []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "tls", "ca.pem")); err == nil {
			out = append(out, d)
		}
	}
	return append(out, "/var/lib/herd")
}

// client is an HTTP client for the API at o.base.
func (o *apiOpts) client(timeout time.Duration) (*http.Client, error) {
	u, err := url.Parse(o.base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q is not an http(s) URL", o.base)
	}
	hc := &http.Client{Timeout: timeout}
	if u.Scheme == "http" {
		return hc, nil
	}
	caFile, dataDir := o.caFile, o.dataDir
	if caFile == "" && dataDir == "" {
		for _, d := range defaultDataDirs() {
			if _, err := os.Stat(filepath.Join(d, "tls", "ca.pem")); err == nil {
				dataDir = d
				break
			}
		}
	}
	if caFile == "" && dataDir != "" {
		caFile = secure.Files{Dir: dataDir}.CAFile()
	}
	if caFile == "" {
		return nil, errors.New("the agent API speaks HTTPS with the cluster's certificate: give the cluster CA with --ca-file or HERD_CA_FILE, " +
			"or --data-dir of a node on this machine (herd tls cert create makes a CA file and a client certificate)")
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", caFile)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if dataDir != "" {
		f := secure.Files{Dir: dataDir}
		if c, err := f.LoadNodeCert(); err == nil {
			tc.Certificates = []tls.Certificate{c}
		}
	}
	hc.Transport = &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}
	return hc, nil
}

// getJSON GETs path from the agent API into out. A non-2xx answer becomes an
// error carrying the API's message.
func getJSON(o *apiOpts, path string, out any) error {
	return callAPI(http.MethodGet, o, path, nil, out)
}

// callAPI sends a request (a JSON body when in is not nil) to the agent API
// and decodes the answer into out.
func callAPI(method string, o *apiOpts, path string, in, out any) error {
	client, err := o.client(60 * time.Second)
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := strings.TrimRight(o.base, "/") + path
	req, err := o.request(context.Background(), method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the agent API at %s: %w", o.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", u, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return fmt.Errorf("%s from %s", resp.Status, u)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s answered with something that is not herd's JSON: %w", u, err)
	}
	return nil
}

func newMembersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes with their gossip status and registry role",
		Args:  cobra.NoArgs,
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var resp api.MembersResponse
		if err := getJSON(base, "/v1/members", &resp); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tADDRESS\tSTATUS\tROLE\tLEADER\tGATEWAY\tAPI\tVERSION\tMAINT")
		for _, m := range resp.Members {
			leader := ""
			if m.Leader {
				leader = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, hostPort(m.Address, m.GossipPort), m.Status, m.Role, leader,
				hostPort(m.Address, m.GatewayPort), hostPort(m.Address, m.APIPort), dash(m.Version), dash(m.Maintenance))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if resp.Error != "" {
			fmt.Fprintln(os.Stderr, "warning:", resp.Error)
		}
		return nil
	}
	return cmd
}

func newServicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "services [NAME]",
		Short: "List services, or the instances of one service",
		Args:  cobra.MaximumNArgs(1),
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		if len(args) == 0 {
			var resp api.ServicesResponse
			if err := getJSON(base, "/v1/services", &resp); err != nil {
				return err
			}
			fmt.Fprintln(tw, "SERVICE\tINSTANCES")
			for _, s := range resp.Services {
				fmt.Fprintf(tw, "%s\t%d\n", s.Name, s.Instances)
			}
			return tw.Flush()
		}
		if !api.ValidName(args[0]) {
			return fmt.Errorf("service name %q is not a DNS label", args[0])
		}
		var resp api.ServiceResponse
		if err := getJSON(base, "/v1/services/"+args[0], &resp); err != nil {
			return err
		}
		fmt.Fprintln(tw, "ID\tNODE\tADDRESS\tPATH\tWEIGHT\tHEALTH\tTAGS")
		for _, in := range resp.Instances {
			tags := append([]string(nil), in.Tags...)
			sort.Strings(tags)
			health := dash(in.Health)
			if in.Maintenance != "" {
				health = "maintenance"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.ID, in.Node, hostPort(in.Address, in.Port), dash(in.Path), in.Weight, health, dash(strings.Join(tags, ",")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return printChecks(cmd.OutOrStdout(), resp.Instances, time.Now())
	}
	return cmd
}

// printChecks lists the checks of instances: status, since when, and the
// output of the run that set the status; then why instances are in
// maintenance.
func printChecks(w io.Writer, instances []api.Instance, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := false
	for _, in := range instances {
		for _, c := range in.Checks {
			if !header {
				fmt.Fprintln(tw, "\nINSTANCE\tCHECK\tTYPE\tSTATUS\tSINCE\tOUTPUT")
				header = true
			}
			since := "-"
			if !c.Since.IsZero() {
				since = c.Since.Local().Format(time.DateTime) + " (" + now.Sub(c.Since).Truncate(time.Second).String() + " ago)"
			}
			out := strings.Join(strings.Fields(c.Output), " ")
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, c.Name, checkWhat(c), c.Status, since, dash(out))
		}
	}
	for _, in := range instances {
		if in.Maintenance != "" {
			fmt.Fprintf(tw, "\n%s is in maintenance: %s\n", in.ID, in.Maintenance)
		}
	}
	return tw.Flush()
}

// checkWhat describes a check in a few words.
func checkWhat(c api.Check) string {
	switch c.Type {
	case api.CheckHTTP:
		return fmt.Sprintf("http GET %s every %s", c.Path, c.Interval.D())
	case api.CheckTTL:
		return fmt.Sprintf("ttl %s", c.TTL.D())
	case api.CheckGRPC:
		if c.GRPCService != "" {
			return fmt.Sprintf("grpc %s every %s", c.GRPCService, c.Interval.D())
		}
	}
	return fmt.Sprintf("%s every %s", c.Type, c.Interval.D())
}

func hostPort(host string, port int) string {
	if host == "" || port == 0 {
		return "-"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLeaveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Take the node at --api out of the cluster for good",
		Long: `Take the node at --api out of the cluster for good: its services are deregistered, it hands the
registry leadership over if it holds it, removes its own member, leaves gossip, clears its member data
and exits 0. Refused when the voters left behind would not keep a quorum.`,
		Args: cobra.NoArgs,
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var out map[string]string
		if err := callAPI(http.MethodPost, base, "/v1/leave", nil, &out); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s left the cluster\n", out["left"])
		return nil
	}
	return cmd
}

func newForceLeaveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "force-leave NAME",
		Short: "Remove a dead node: its registry member and its gossip entry",
		Args:  cobra.ExactArgs(1),
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if !api.ValidName(args[0]) {
			return fmt.Errorf("node name %q is not a DNS label", args[0])
		}
		if err := callAPI(http.MethodPost, base, "/v1/force-leave/"+args[0], nil, &map[string]string{}); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s removed\n", args[0])
		return nil
	}
	return cmd
}
