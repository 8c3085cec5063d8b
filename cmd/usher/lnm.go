package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/site"
	"github.com/usher-vm/usher/transport"
)

func runLNM(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := site.Params()
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
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if addr := cfg.String("lnm.pprof"); addr != "" {
		if err := site.ServePprof(ctx, &wg, "lnm.pprof", addr, log); err != nil {
			return err
		}
	}
	if *count < 1 || *count > 100000 {
		return fmt.Errorf("--count must be between 1 and 100000")
	}
	if *count == 1 && *caDir == "" {
		l, err := site.NewLNM(ctx, cfg, site.LNMOptions{Logger: log})
		if err != nil {
			return err
		}
		log.Info("LNM starting", "name", cfg.String("lnm.name"), "driver", l.Driver().Kind(), "controller", cfg.String("lnm.controller"))
		return l.Run(ctx)
	}
	// Load-generator mode: N simulated LNMs in this process, each with its
	// own certificate (minted from the CA in --ca-dir) and its own TLS +
	// yamux connection.
	name := cfg.String("lnm.name")
	if name == "" {
		return fmt.Errorf("lnm.name is not set")
	}
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
	for i := 1; i <= *count; i++ {
		n := fmt.Sprintf("%s%d", name, i)
		cert, key, err := ca.Issue(transport.RoleLNM, n, nil, issued)
		if err != nil {
			return err
		}
		o := site.LNMOptions{Name: n, CertFile: cert, KeyFile: key, Logger: log, Set: map[string]any{}}
		if d := cfg.String("lnm.sim_state_file"); d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			o.Set["lnm.sim_state_file"] = filepath.Join(d, n+".json")
		}
		l, err := site.NewLNM(ctx, cfg, o)
		if err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Run(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", n, err)
			}
		}()
	}
	log.Info("simulated LNMs started", "count", *count, "prefix", name)
	<-ctx.Done()
	wg.Wait()
	close(errc)
	return <-errc
}
