package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/herdcluster/herd/node"
	"github.com/spf13/cobra"
)

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save the registry to a file, or restore a new cluster from one",
	}
	cmd.AddCommand(newSnapshotSaveCmd(), newSnapshotRestoreCmd())
	return cmd
}

func newSnapshotSaveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot of the registry, taken through the agent API of any node, to FILE",
		Args:  cobra.ExactArgs(1),
	}
	base := apiFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		file := args[0]
		client, err := base.client(0)
		if err != nil {
			return err
		}
		req, err := base.request(context.Background(), http.MethodGet, "/v1/snapshot", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("cannot reach the agent API at %s: %w", base.base, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return fmt.Errorf("snapshot: %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		// Written next to FILE and renamed into place once complete, so
		// FILE is never a partial snapshot.
		tmp, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".part-*")
		if err != nil {
			return err
		}
		n, err := io.Copy(tmp, resp.Body)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("snapshot: transfer failed after %d bytes: %w", n, err)
		}
		if err := os.Rename(tmp.Name(), file); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "snapshot saved to %s (%d bytes)\n", file, n)
		return nil
	}
	return cmd
}

func newSnapshotRestoreCmd() *cobra.Command {
	cfg := node.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Make a new one-member data dir from a snapshot",
		Long: `Make --data-dir a new one-member cluster holding the registry saved in FILE. Then start
'herd agent' with the same --name, --data-dir and addresses: it serves the restored registry,
and other nodes join it as usual. The snapshot's integrity hash is checked.`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "node name of the restored member")
	f.StringVar(&cfg.DataDir, "data-dir", "", "data directory to create (must not hold a member)")
	f.StringVar(&cfg.BindIP, "bind", cfg.BindIP, "IP the agent will bind")
	f.StringVar(&cfg.AdvertiseIP, "advertise", "", "IP peers will use (default: --bind)")
	f.IntVar(&cfg.PeerPort, "peer-port", cfg.PeerPort, "etcd peer port the agent will use")
	f.IntVar(&cfg.ClientPort, "client-port", cfg.ClientPort, "etcd client port the agent will use")
	f.IntVar(&cfg.GossipPort, "gossip-port", cfg.GossipPort, "gossip port the agent will use (in the printed join command)")
	f.BoolVar(&cfg.Insecure, "insecure", false, "restore into a plaintext data dir (for an --insecure cluster)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		if cfg.DataDir == "" {
			cfg.DataDir = filepath.Join("data", cfg.Name)
		}
		cfg.Out = cmd.OutOrStdout()
		if err := node.RestoreSnapshot(cfg, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "restored %s into %s; start it with: herd agent --name %s --data-dir %s --bind %s\n",
			args[0], cfg.DataDir, cfg.Name, cfg.DataDir, cfg.BindIP)
		return nil
	}
	return cmd
}
