package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/herdcluster/herd/api"
	"github.com/spf13/cobra"
)

func newWatchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Follow a service's instances with blocking queries",
	}
	cmd.AddCommand(newWatchServiceCmd())
	return cmd
}

func newWatchServiceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service NAME [-- CMD [ARG...]]",
		Short: "Run CMD with the service's instances as JSON on each change",
		Long: `Follow the instances of service NAME through the node at --api with blocking queries
(GET /v1/services/NAME?index=N&wait=D): at the start and on every change of the instances, their
health or their maintenance, run CMD with the instances as a JSON array on its standard input and
HERD_WATCH_SERVICE and HERD_WATCH_INDEX in its environment; without CMD, print the array as one line. A service
with no instances is an empty array. CMD runs one at a time; changes meanwhile are folded into the
next run. A failed CMD is reported and the watch goes on; the watch ends on SIGINT or SIGTERM, or
when the API refuses the token.`,
		Args: cobra.MinimumNArgs(1),
	}
	base := apiFlag(cmd)
	wait := cmd.Flags().Duration("wait", 5*time.Minute, "how long each blocking query waits for a change (at most 10m)")
	passing := cmd.Flags().Bool("passing", false, "only the instances that are passing and not in maintenance (the array may then be empty)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := bindEnv(cmd.Flags()); err != nil {
			return err
		}
		name := args[0]
		if !api.ValidName(name) {
			return fmt.Errorf("service name %q is not a DNS label", name)
		}
		if dash := cmd.ArgsLenAtDash(); len(args) > 1 && dash != 1 {
			return fmt.Errorf("put the command after --: herd watch service %s -- CMD [ARG...]", name)
		}
		if *wait <= 0 || *wait > 10*time.Minute {
			return fmt.Errorf("--wait %s: want a duration up to 10m", *wait)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		w := &watcher{o: base, service: name, wait: *wait, passing: *passing, command: args[1:], out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
		err := w.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	return cmd
}

// watcher follows one service with blocking queries.
type watcher struct {
	o       *apiOpts
	service string
	wait    time.Duration
	passing bool
	command []string
	out     io.Writer
	errOut  io.Writer
}

// errFatal marks answers that retrying cannot fix (a refused token, a bad
// request).
var errFatal = errors.New("the API refused the watch")

func (w *watcher) run(ctx context.Context) error {
	var index int64
	var last []byte
	backoff := time.Second
	for ctx.Err() == nil {
		ins, next, err := w.query(ctx, index)
		switch {
		case errors.Is(err, errFatal):
			return err
		case err != nil:
			if ctx.Err() == nil {
				fmt.Fprintf(w.errOut, "herd watch: %v; trying again in %s\n", err, backoff)
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		if next < index {
			// The index went back (another node answered, or the registry
			// was restored): start again from a fresh read.
			fmt.Fprintf(w.errOut, "herd watch: the index went back from %d to %d; reading the service afresh\n", index, next)
			index = 0
			continue
		}
		index = next
		body, err := json.Marshal(ins)
		if err != nil {
			return err
		}
		if last != nil && bytes.Equal(body, last) {
			continue // woken by a change that left the instances as they were
		}
		last = body
		if err := w.handle(ctx, body, index); err != nil && ctx.Err() == nil {
			fmt.Fprintf(w.errOut, "herd watch: %v\n", err)
		}
	}
	return ctx.Err()
}

// query runs one blocking query: the instances (none when the service
// has none) and the index.
func (w *watcher) query(ctx context.Context, index int64) ([]api.Instance, int64, error) {
	hc, err := w.o.client(w.wait + w.wait/16 + 30*time.Second)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errFatal, err)
	}
	path := fmt.Sprintf("/v1/services/%s?index=%d&wait=%s", w.service, index, w.wait)
	if w.passing {
		path += "&passing"
	}
	req, err := w.o.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errFatal, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot reach the agent API at %s: %w", w.o.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, 0, err
	}
	next, ierr := strconv.ParseInt(resp.Header.Get("X-Herd-Index"), 10, 64)
	var e api.Error
	_ = json.Unmarshal(b, &e)
	switch {
	case resp.StatusCode == http.StatusNotFound && e.Reason == "unknown_service" && ierr == nil:
		return []api.Instance{}, next, nil
	case resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusForbidden, resp.StatusCode == http.StatusBadRequest:
		return nil, 0, fmt.Errorf("%w: %s: %s", errFatal, resp.Status, e.Error)
	case resp.StatusCode != http.StatusOK:
		return nil, 0, fmt.Errorf("%s: %s", resp.Status, e.Error)
	case ierr != nil:
		return nil, 0, fmt.Errorf("%w: %s answered without X-Herd-Index: is it a herd node?", errFatal, w.o.base)
	}
	var sr api.ServiceResponse
	if err := json.Unmarshal(b, &sr); err != nil {
		return nil, 0, fmt.Errorf("%s answered with something that is not herd's JSON: %w", w.o.base, err)
	}
	return sr.Instances, next, nil
}

// handle runs the command with body on its standard input, or prints body.
func (w *watcher) handle(ctx context.Context, body []byte, index int64) error {
	if len(w.command) == 0 {
		_, err := fmt.Fprintf(w.out, "%s\n", body)
		return err
	}
	c := exec.CommandContext(ctx, w.command[0], w.command[1:]...)
	c.Stdin = bytes.NewReader(body)
	c.Stdout, c.Stderr = w.out, w.errOut
	// Not HERD_SERVICE: every herd command reads HERD_<FLAG> as its flag, so
	// a CMD running `herd maint enable` would be scoped to the service.
	c.Env = append(os.Environ(), "HERD_WATCH_SERVICE="+w.service, "HERD_WATCH_INDEX="+strconv.FormatInt(index, 10))
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %w", w.command[0], err)
	}
	return nil
}
