package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/transport"
)

func runLNM(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := params()
	fs := newFlags("lnm", "[flags]", `Runs a local node manager: it drives this host's hypervisor through a
driver (sim, the simulated hypervisor; libvirt), connects to the controller
with its certificate, serves the controller's calls and reports state
changes and 1/5/15-minute usage averages. The node name must equal the
certificate's CN.

Example:
  usher ca issue --dir /etc/usher/pki --role lnm --name node1
  usher lnm --name node1 --controller ctl.example.org:7070 \
      --cert-file /etc/usher/pki/node1.crt --key-file /etc/usher/pki/node1.key \
      --ca-file /etc/usher/pki/ca.crt --driver sim --sim-state-file /var/lib/usher/node1.json`, errOut)
	cfg.BindFlags(fs, "lnm.", "log.")
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
	name := cfg.String("lnm.name")
	if name == "" {
		return fmt.Errorf("lnm.name is not set")
	}
	for _, k := range []string{"lnm.cert_file", "lnm.key_file", "lnm.ca_file"} {
		if cfg.String(k) == "" {
			return fmt.Errorf("%s is not set (see usher ca --help)", k)
		}
	}
	sn := cfg.String("lnm.server_name")
	if sn == "" {
		host, _, err := net.SplitHostPort(cfg.String("lnm.controller"))
		if err != nil {
			return fmt.Errorf("lnm.controller: %w", err)
		}
		sn = host
	}
	tlsCfg, err := transport.ClientTLS(cfg.String("lnm.ca_file"), cfg.String("lnm.cert_file"), cfg.String("lnm.key_file"), sn)
	if err != nil {
		return err
	}
	var drv nodemgr.Driver
	switch d := cfg.String("lnm.driver"); d {
	case "sim":
		drv, err = sim.New(sim.Options{Node: name, Address: cfg.String("lnm.address"), CPUs: cfg.Int("lnm.sim_cpus"),
			MemMB: cfg.Int("lnm.sim_mem_mb"), BootDelay: cfg.Duration("lnm.sim_boot_delay"), StateFile: cfg.String("lnm.sim_state_file")})
	default:
		return fmt.Errorf("lnm.driver %q: this build knows the sim driver only", d)
	}
	if err != nil {
		return err
	}
	defer drv.Close()
	var recTLS *tls.Config
	if cfg.String("lnm.recovery_listen") != "" {
		if recTLS, err = transport.RecoveryServerTLS(cfg.String("lnm.ca_file"), cfg.String("lnm.cert_file"), cfg.String("lnm.key_file")); err != nil {
			return err
		}
	}
	l, err := nodemgr.New(nodemgr.Options{Name: name, Address: cfg.String("lnm.address"), Controller: cfg.String("lnm.controller"),
		TLS: tlsCfg, Driver: drv, ScanInterval: cfg.Duration("lnm.scan_interval"), Logger: log.With("room", "nodemgr"),
		RecoveryListen: cfg.String("lnm.recovery_listen"), RecoveryTLS: recTLS})
	if err != nil {
		return err
	}
	log.Info("LNM starting", "name", name, "driver", drv.Kind(), "controller", cfg.String("lnm.controller"))
	return l.Run(ctx)
}
