package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/transport"
)

func runLNM(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := params()
	fs := newFlags("lnm", "[flags]", `Runs a local node manager: it drives this host's hypervisor through a
driver (sim, the simulated hypervisor; libvirt, real QEMU/KVM through
libvirtd's socket: --driver libvirt --libvirt-socket PATH), connects to the controller
with its certificate, serves the controller's calls and reports state
changes and 1/5/15-minute usage averages. The node name must equal the
certificate's CN.

Example:
  usher ca issue --dir /etc/usher/pki --role lnm --name node1
  usher lnm --name node1 --controller ctl.example.org:7070 \
      --cert-file /etc/usher/pki/node1.crt --key-file /etc/usher/pki/node1.key \
      --ca-file /etc/usher/pki/ca.crt --driver sim --sim-state-file /var/lib/usher/node1.json`, errOut)
	count := fs.Int("count", 1, "run this many simulated LNMs in one process, named <lnm.name>1…N (load generation; needs --ca-dir; lnm.sim_state_file is then a directory)")
	caDir := fs.String("ca-dir", "", "with --count: the site CA directory, to issue one certificate per simulated node")
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
	if addr := cfg.String("lnm.pprof"); addr != "" {
		if err := servePprof(ctx, "lnm.pprof", addr, log); err != nil {
			return err
		}
	}
	name := cfg.String("lnm.name")
	if name == "" {
		return fmt.Errorf("lnm.name is not set")
	}
	if *count < 1 || *count > 100000 {
		return fmt.Errorf("--count must be between 1 and 100000")
	}
	sn := cfg.String("lnm.server_name")
	if sn == "" {
		host, _, err := net.SplitHostPort(cfg.String("lnm.controller"))
		if err != nil {
			return fmt.Errorf("lnm.controller: %w", err)
		}
		sn = host
	}
	if *count == 1 && *caDir == "" {
		for _, k := range []string{"lnm.cert_file", "lnm.key_file", "lnm.ca_file"} {
			if cfg.String(k) == "" {
				return fmt.Errorf("%s is not set (see usher ca --help)", k)
			}
		}
		return runOneLNM(ctx, cfg, name, sn, cfg.String("lnm.cert_file"), cfg.String("lnm.key_file"), cfg.String("lnm.sim_state_file"), log)
	}
	// Load-generator mode: N simulated LNMs in this process, each with its
	// own certificate (minted from the CA in --ca-dir) and its own TLS +
	// yamux connection.
	if *caDir == "" {
		return fmt.Errorf("--count needs --ca-dir to issue one certificate per simulated node")
	}
	if cfg.String("lnm.driver") != "sim" {
		return fmt.Errorf("--count works with the sim driver only")
	}
	ca, err := transport.LoadCA(*caDir)
	if err != nil {
		return err
	}
	issued := filepath.Join(*caDir, "issued")
	errc := make(chan error, *count)
	var wg sync.WaitGroup
	for i := 1; i <= *count; i++ {
		n := fmt.Sprintf("%s%d", name, i)
		cert, key, err := ca.Issue(transport.RoleLNM, n, nil, issued)
		if err != nil {
			return err
		}
		state := ""
		if d := cfg.String("lnm.sim_state_file"); d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			state = filepath.Join(d, n+".json")
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runOneLNM(ctx, cfg, n, sn, cert, key, state, log); err != nil {
				errc <- fmt.Errorf("%s: %w", n, err)
			}
		}()
	}
	log.Info("simulated LNMs started", "count", *count, "prefix", name)
	wg.Wait()
	close(errc)
	return <-errc
}

// runOneLNM runs one LNM until ctx ends.
func runOneLNM(ctx context.Context, cfg *config.Set, name, serverName, certFile, keyFile, stateFile string, log *slog.Logger) error {
	caFile := cfg.String("lnm.ca_file")
	tlsCfg, err := transport.ClientTLS(caFile, certFile, keyFile, serverName)
	if err != nil {
		return err
	}
	var drv nodemgr.Driver
	switch d := cfg.String("lnm.driver"); d {
	case "sim":
		drv, err = sim.New(sim.Options{Node: name, Address: cfg.String("lnm.address"), CPUs: cfg.Int("lnm.sim_cpus"),
			MemMB: cfg.Int("lnm.sim_mem_mb"), BootDelay: cfg.Duration("lnm.sim_boot_delay"), StateFile: stateFile})
	case "libvirt":
		var d *libvirt.Driver
		d, err = libvirt.New(ctx, libvirt.Options{Node: name, Socket: cfg.String("lnm.libvirt_socket"), URI: cfg.String("lnm.libvirt_uri"),
			MigrationURI: cfg.String("lnm.libvirt_migration_uri"), DomainType: cfg.String("lnm.libvirt_domain_type"),
			Kernel: cfg.String("lnm.libvirt_kernel"), Initrd: cfg.String("lnm.libvirt_initrd"), Cmdline: cfg.String("lnm.libvirt_cmdline"),
			StateDir: cfg.String("lnm.libvirt_state_dir"), Network: cfg.String("lnm.libvirt_network"),
			ShutdownTimeout: cfg.Duration("lnm.libvirt_shutdown_timeout"), Logger: log.With("room", "libvirt")})
		if err == nil {
			drv = d
		}
	default:
		return fmt.Errorf("lnm.driver %q: want sim or libvirt", d)
	}
	if err != nil {
		return err
	}
	defer drv.Close()
	var recTLS *tls.Config
	if cfg.String("lnm.recovery_listen") != "" {
		if recTLS, err = transport.RecoveryServerTLS(caFile, certFile, keyFile); err != nil {
			return err
		}
	}
	lim := transport.DefaultLimits()
	lim.KeepAlive = cfg.Duration("lnm.keepalive")
	lim.WriteTimeout = cfg.Duration("lnm.write_timeout")
	l, err := nodemgr.New(nodemgr.Options{Name: name, Address: cfg.String("lnm.address"), Controller: cfg.String("lnm.controller"),
		TLS: tlsCfg, Driver: drv, Limits: lim, ScanInterval: cfg.Duration("lnm.scan_interval"), Logger: log.With("room", "nodemgr"),
		RecoveryListen: cfg.String("lnm.recovery_listen"), RecoveryTLS: recTLS})
	if err != nil {
		return err
	}
	log.Info("LNM starting", "name", name, "driver", drv.Kind(), "controller", cfg.String("lnm.controller"))
	return l.Run(ctx)
}
