package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/spf13/cobra"
)

func newMaintCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "maint",
		Short: "Show, enable or disable maintenance mode on the node at --api",
		Long: `Maintenance mode takes the node at --api (or its instances of one service) out of traffic:
no gateway sends them new requests, in-flight requests finish, and the registrations stay. It is
kept in the node's data dir, so a node rebooted in maintenance comes back in maintenance.

Without a subcommand it shows the node's maintenance state.`,
		Args: cobra.NoArgs,
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var m api.Maintenance
		if err := getJSON(base, "/v1/maintenance", &m); err != nil {
			return err
		}
		return printMaint(cmd.OutOrStdout(), m, time.Now())
	}
	cmd.AddCommand(newMaintChangeCmd(true), newMaintChangeCmd(false))
	return cmd
}

func newMaintChangeCmd(enable bool) *cobra.Command {
	use, short := "disable", "Take the node (or --service) out of maintenance"
	if enable {
		use, short = "enable", "Put the node (or its instances of --service) in maintenance"
	}
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs}
	base := apiFlag(cmd)
	var service, reason string
	cmd.Flags().StringVar(&service, "service", "", "only this node's instances of this service (needs a token with the service's policy; the whole node needs operator)")
	if enable {
		cmd.Flags().StringVar(&reason, "reason", "", "why, shown by herd services and herd maint (at most 256 printable bytes)")
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		path := "/v1/maintenance"
		if cmd.Flags().Changed("service") || service != "" {
			if !api.ValidName(service) {
				return fmt.Errorf("--service %q is not a DNS label", service)
			}
			path += "?service=" + url.QueryEscape(service)
		}
		if err := api.ValidateMaintReason(reason); err != nil {
			return fmt.Errorf("--reason: %w", err)
		}
		method := http.MethodDelete
		var body any
		if enable {
			method, body = http.MethodPut, api.MaintenanceRequest{Reason: reason}
		}
		var m api.Maintenance
		if err := callAPI(method, base, path, body, &m); err != nil {
			return err
		}
		return printMaint(cmd.OutOrStdout(), m, time.Now())
	}
	return cmd
}

// printMaint shows a node's maintenance state.
func printMaint(w io.Writer, m api.Maintenance, now time.Time) error {
	if m.Node == nil && len(m.Services) == 0 {
		_, err := fmt.Fprintln(w, "not in maintenance")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCOPE\tSINCE\tBY\tREASON")
	row := func(scope string, e api.MaintEntry) {
		since := e.Since.Local().Format(time.DateTime) + " (" + now.Sub(e.Since).Truncate(time.Second).String() + " ago)"
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", scope, since, dash(e.By), e.Reason)
	}
	if m.Node != nil {
		row("node", *m.Node)
	}
	names := make([]string, 0, len(m.Services))
	for s := range m.Services {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		row("service "+s, m.Services[s])
	}
	return tw.Flush()
}

func newReloadCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the node at --api read its --config-dir again",
		Long: `Make the node at --api read its --config-dir again, as SIGHUP does: added and changed files are
registered, removed ones deregistered. A file with an error is listed with it, and its instance stays as
an earlier read left it; the others are applied. Exits 1 when any file has an error.`,
		Args: cobra.NoArgs,
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		var r api.ReloadResponse
		if err := callAPI(http.MethodPost, base, "/v1/reload", nil, &r); err != nil {
			return err
		}
		if r.Error != "" {
			return fmt.Errorf("cannot read %s: %s", r.Dir, r.Error)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FILE\tINSTANCE\tERROR")
		bad := 0
		for _, f := range r.Files {
			inst := "-"
			if f.Service != "" {
				inst = f.Service + "/" + f.ID
			}
			if f.Error != "" {
				bad++
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", f.File, inst, dash(f.Error))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files, %d registered or changed, %d deregistered\n", r.Dir, len(r.Files), r.Registered, r.Deregistered)
		if bad > 0 {
			return fmt.Errorf("%d of %d files have errors (their instances stay as they were)", bad, len(r.Files))
		}
		return nil
	}
	return cmd
}
