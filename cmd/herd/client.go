package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/spf13/cobra"
)

// apiFlag adds --api (env HERD_API) to cmd and returns where it is stored.
func apiFlag(cmd *cobra.Command) *string {
	v := new(string)
	cmd.Flags().StringVar(v, "api", "http://127.0.0.1:8500", "agent API address of any node")
	return v
}

// getJSON GETs path from the agent API into out. A non-2xx answer becomes an
// error carrying the API's message.
func getJSON(base, path string, out any) error { return callAPI(http.MethodGet, base, path, out) }

// callAPI sends a bodiless request to the agent API and decodes the answer
// into out.
func callAPI(method, base, path string, out any) error {
	u, err := url.Parse(strings.TrimRight(base, "/") + path)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--api %q is not an http(s) URL", base)
	}
	client := &http.Client{Timeout: 60 * time.Second}
	req, err := http.NewRequest(method, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the agent API at %s: %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", u, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return fmt.Errorf("%s from %s", resp.Status, u)
	}
	if err := json.Unmarshal(body, out); err != nil {
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
		if err := getJSON(*base, "/v1/members", &resp); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tADDRESS\tSTATUS\tROLE\tLEADER\tGATEWAY\tAPI\tVERSION")
		for _, m := range resp.Members {
			leader := ""
			if m.Leader {
				leader = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, hostPort(m.Address, m.GossipPort), m.Status, m.Role, leader,
				hostPort(m.Address, m.GatewayPort), hostPort(m.Address, m.APIPort), dash(m.Version))
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
			if err := getJSON(*base, "/v1/services", &resp); err != nil {
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
		if err := getJSON(*base, "/v1/services/"+args[0], &resp); err != nil {
			return err
		}
		fmt.Fprintln(tw, "ID\tNODE\tADDRESS\tPATH\tWEIGHT\tHEALTH\tTAGS")
		for _, in := range resp.Instances {
			tags := append([]string(nil), in.Tags...)
			sort.Strings(tags)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.ID, in.Node, hostPort(in.Address, in.Port), dash(in.Path), in.Weight, dash(in.Health), dash(strings.Join(tags, ",")))
		}
		return tw.Flush()
	}
	return cmd
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
		if err := callAPI(http.MethodPost, *base, "/v1/leave", &out); err != nil {
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
		if err := callAPI(http.MethodPost, *base, "/v1/force-leave/"+args[0], &map[string]string{}); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s removed\n", args[0])
		return nil
	}
	return cmd
}
