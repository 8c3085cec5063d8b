package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/site"
)

func runController(ctx context.Context, args []string, out, errOut io.Writer) error {
	if len(args) > 0 && args[0] == "status" {
		return runControllerStatus(ctx, args[1:], out, errOut)
	}
	cfg := site.Params()
	fs := newFlags("controller", "[flags]", `Runs the Usher controller: authenticates users through the policy chain,
keeps the global state, and drives the LNMs that connect with certificates
signed by the site CA. Policies are Lua scripts (shipped ones enabled by
policy.enable, plus every script in policy.dirs, hot-reloaded).

With controller.etcd, it is one of several highly available controllers:
one leads, the others stand by (docs/ha.md). "usher controller status"
shows who leads, in which term, the standbys and etcd's health.

Example:
  usher ca init --dir /etc/usher/pki
  usher ca issue --dir /etc/usher/pki --role controller --name ctl --host ctl.example.org
  usher controller --listen :7070 --cert-file /etc/usher/pki/ctl.crt \
      --key-file /etc/usher/pki/ctl.key --ca-file /etc/usher/pki/ca.crt`, errOut)
	cfg.BindFlags(fs, "controller.", "policy.", "log.")
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return err
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return err
	}
	log, err := logger(cfg.String("log.level"), cfg.String("log.format"), errOut)
	if err != nil {
		return err
	}
	if len(cfg.Strings("controller.etcd")) > 0 {
		return site.RunHA(ctx, cfg, site.ControllerOptions{Logger: log})
	}
	c, err := site.NewController(ctx, cfg, site.ControllerOptions{Logger: log})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Run(ctx)
}

func runControllerStatus(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := site.Params()
	fs := newFlags("controller status", "[flags]", `Shows a highly available site (controller.etcd): the leader and its term,
the standbys in the order they would lead, and each etcd endpoint's health
(the raft leader marked). Reads the same configuration as the controller.`, errOut)
	jsonOut := fs.Bool("json", false, "print JSON")
	cfg.BindFlags(fs, "controller.", "log.")
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return err
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return err
	}
	if len(cfg.Strings("controller.etcd")) == 0 {
		fmt.Fprintln(errOut, "usher controller status: controller.etcd is not set: a single controller (see its log and ush status)")
		return errUsage
	}
	if cfg.String("controller.advertise") == "" {
		cfg.Set("controller.advertise", "status", "status")
	}
	m, err := site.HAMember(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer m.Close()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, herr := m.Health(sctx)
	if *jsonOut {
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Fprintln(out, string(b))
		return herr
	}
	if st.Leader.ID != "" {
		fmt.Fprintf(out, "leader: %s at %s, term %d\n", st.Leader.ID, st.Leader.Address, st.Leader.Term)
	} else {
		fmt.Fprintln(out, "leader: none elected")
	}
	for i, c := range st.Controllers {
		role := "standby"
		if i == 0 {
			role = "leader"
		}
		fmt.Fprintf(out, "  %-8s %s at %s (campaigning since revision %d)\n", role, c.ID, c.Address, c.Term)
	}
	fmt.Fprintln(out, "etcd:")
	for _, e := range st.Members {
		state := "ok, version " + e.Version
		if e.Leader {
			state += ", raft leader"
		}
		if !e.OK {
			state = "DOWN: " + e.Error
		}
		fmt.Fprintf(out, "  %-32s %s\n", e.Endpoint, state)
	}
	return herr
}
