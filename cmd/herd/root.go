package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "herd",
		Short:         "herd: a self-contained microservice cluster",
		Long:          "herd turns a handful of machines into a microservice cluster: every node runs an embedded etcd member,\ngossip, service handlers and a gateway that routes /<service>/... to a live instance on any node.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAgentCmd(), newMembersCmd(), newServicesCmd(), newLeaveCmd(), newForceLeaveCmd(), newMaintCmd(), newReloadCmd(), newWatchCmd(), newSnapshotCmd(), newTokenCmd(), newTLSCmd(), newKeyringCmd(), newACLCmd(), newVersionCmd())
	return root
}

// bindEnv fills every flag of fs that was not given on the command line from
// the environment variable HERD_<FLAG> (upper case, '-' as '_'). A bad value
// names the variable.
func bindEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		// A flag given on the command line wins over its alternative's
		// variable: --token-file over HERD_TOKEN, --token over
		// HERD_TOKEN_FILE.
		if alt, ok := envAlternatives[f.Name]; ok {
			if a := fs.Lookup(alt); a != nil && a.Changed {
				return
			}
		}
		env := "HERD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			parts := splitList(v)
			if serr := sv.Replace(parts); serr != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, serr)
			}
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("%s=%q: %w", env, v, serr)
		}
	})
	return err
}

// envAlternatives are flags that give the same thing two ways.
var envAlternatives = map[string]string{"token": "token-file", "token-file": "token"}

// splitList splits a comma-separated list, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the herd version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "herd", version)
		},
	}
}
