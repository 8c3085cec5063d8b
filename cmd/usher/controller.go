package main

import (
	"context"
	"io"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/site"
)

func runController(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := site.Params()
	fs := newFlags("controller", "[flags]", `Runs the Usher controller: authenticates users through the policy chain,
keeps the global state, and drives the LNMs that connect with certificates
signed by the site CA. Policies are Lua scripts (shipped ones enabled by
policy.enable, plus every script in policy.dirs, hot-reloaded).

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
