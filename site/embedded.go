package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/controller"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/transport"
)

// Options describe an embedded site: a controller and LNMs in this
// process, on loopback, assembled by NewController and NewLNM exactly as
// `usher controller` and `usher lnm` assemble theirs (known LNMs, ticket
// keys, size hint and recovery in Dir, the policy host from Config). What
// the fields set is written into the configuration.
type Options struct {
	Dir    string      // state directory: certificates, controller state, sim state files
	Config *config.Set // the site's parameters (nil: Params() defaults)
	Listen string      // controller address (default 127.0.0.1:0)
	LNMs   int         // simulated LNMs to start (node1…N)
	Domain string      // Usher domain
	// Hooks replaces the Lua policy host (tests of the mechanism); Bind and
	// Policy go with it (see ControllerOptions).
	Hooks           core.Hooks
	Bind            func(c *core.Controller)
	Policy          controller.PolicyAdmin
	ExtraPolicyDirs []string
	SimCPUs         int
	SimMemMB        int
	SimBootDelay    time.Duration
	SimPersist      bool // keep sim state in files under Dir (VMs outlive LNMs)
	// NewDriver, when set, makes the VMM driver of each LNM AddLNM starts
	// (libvirt hosts in the real-hypervisor tests); otherwise lnm.driver
	// (sim) does. address is what the LNM advertises ("" = the driver's own).
	NewDriver      func(name string) (drv nodemgr.Driver, address string, err error)
	ReportInterval time.Duration // LNM usage reports
	ScanInterval   time.Duration // LNM scans
	KeepAlive      time.Duration // link keepalive
	Grace          time.Duration // how long a restarted controller waits for known LNMs
	Core           *core.Config  // mechanism parameters written into Config (Domain is filled in)
	Logger         *slog.Logger
}

// Site is a running controller and its LNMs.
type Site struct {
	Opts       Options
	Addr       string
	CAFile     string
	Controller *core.Controller
	Server     *controller.Server
	Ctl        *Controller
	CA         *transport.CA
	cfg        *config.Set

	mu      sync.Mutex
	lnms    map[string]*siteLNM
	ctx     context.Context
	cancel  context.CancelFunc
	ctlDone chan struct{}
}

type siteLNM struct {
	LNM    *LNM
	cancel context.CancelFunc
	done   chan struct{}
}

func set(cfg *config.Set, key string, v any) error {
	return cfg.Set(key, fmt.Sprint(v), "embedded site")
}

// Start makes certificates (or reuses the CA in Dir), starts the controller
// and o.LNMs simulated LNMs, and waits until they are connected.
func Start(ctx context.Context, o Options) (*Site, error) {
	if o.Dir == "" {
		return nil, errors.New("site: no state directory")
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := o.Config
	if cfg == nil {
		cfg = Params()
	}
	pki := filepath.Join(o.Dir, "pki")
	ca, err := transport.LoadCA(pki)
	if err != nil {
		if ca, err = transport.CreateCA(pki, "Usher site CA"); err != nil {
			return nil, err
		}
	}
	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("site: listen address: %w", err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if host != "" && host != "127.0.0.1" {
		hosts = append(hosts, host)
	}
	cert, key, err := ca.Issue(transport.RoleController, "controller", hosts, pki)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(pki, transport.CACertFile)
	vals := map[string]any{
		"controller.listen": o.Listen, "controller.cert_file": cert, "controller.key_file": key, "controller.ca_file": caFile,
		"controller.state_dir": filepath.Join(o.Dir, "controller"), "lnm.ca_file": caFile, "lnm.server_name": "localhost",
		"lnm.recovery_listen": "127.0.0.1:0",
	}
	// What the options set (zero: the parameter's default).
	given := map[string]any{"controller.domain": o.Domain, "controller.report_interval": o.ReportInterval,
		"lnm.scan_interval": o.ScanInterval, "controller.keepalive": o.KeepAlive, "lnm.keepalive": o.KeepAlive,
		"controller.grace": o.Grace, "lnm.sim_cpus": o.SimCPUs, "lnm.sim_mem_mb": o.SimMemMB, "lnm.sim_boot_delay": o.SimBootDelay}
	if c := o.Core; c != nil {
		maps.Copy(given, map[string]any{"controller.start_timeout": c.StartTimeout, "controller.op_timeout": c.OpTimeout,
			"controller.default_mem_mb": c.DefaultMemMB, "controller.default_vcpus": c.DefaultVCPUs,
			"controller.max_request_vms": c.MaxRequestVMs, "controller.event_buffer": c.EventBuffer, "controller.adopt": string(c.Adopt)})
		vals["controller.owner_only"] = c.OwnerOnly
	}
	for k, v := range given {
		switch x := v.(type) {
		case time.Duration:
			if x > 0 {
				vals[k] = x
			}
		case int:
			if x > 0 {
				vals[k] = x
			}
		case string:
			if x != "" {
				vals[k] = x
			}
		}
	}
	for k, v := range vals {
		if err := set(cfg, k, v); err != nil {
			return nil, fmt.Errorf("site: %s: %w", k, err)
		}
	}
	ctl, err := NewController(ctx, cfg, ControllerOptions{Hooks: o.Hooks, Bind: o.Bind, Policy: o.Policy,
		ExtraPolicyDirs: o.ExtraPolicyDirs, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Site{Opts: o, Addr: ctl.Addr(), CAFile: caFile, Controller: ctl.Core, Server: ctl.Server, Ctl: ctl, CA: ca, cfg: cfg,
		lnms: map[string]*siteLNM{}, ctx: sctx, cancel: cancel, ctlDone: make(chan struct{})}
	if err := set(cfg, "lnm.controller", s.Addr); err != nil {
		cancel()
		ctl.Close()
		return nil, err
	}
	go func() {
		defer close(s.ctlDone)
		ctl.Run(sctx)
	}()
	for i := 1; i <= o.LNMs; i++ {
		if err := s.AddLNM(fmt.Sprintf("node%d", i)); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.WaitLNMs(ctx, o.LNMs); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// AddLNM issues a certificate for name and starts an LNM (simulated unless
// Options.NewDriver says otherwise).
func (s *Site) AddLNM(name string) error {
	pki := filepath.Join(s.Opts.Dir, "pki")
	cert, key, err := s.CA.Issue(transport.RoleLNM, name, nil, pki)
	if err != nil {
		return err
	}
	o := LNMOptions{Name: name, CertFile: cert, KeyFile: key, Logger: s.Opts.Logger,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second, Set: map[string]any{"lnm.address": name + ".sim"}}
	if s.Opts.NewDriver != nil {
		drv, address, err := s.Opts.NewDriver(name)
		if err != nil {
			return err
		}
		o.Driver = drv
		o.Set["lnm.address"] = address
	} else if s.Opts.SimPersist {
		f := filepath.Join(s.Opts.Dir, "sim", name+".json")
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		o.Set["lnm.sim_state_file"] = f
	}
	l, err := NewLNM(s.ctx, s.cfg, o)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sl := &siteLNM{LNM: l, cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.lnms[name] = sl
	s.mu.Unlock()
	go func() {
		defer close(sl.done)
		l.Run(ctx)
	}()
	return nil
}

// StopLNM stops one LNM process-equivalent (its sim keeps its VMs when
// SimPersist is set, as real VMs outlive a crashed LNM).
func (s *Site) StopLNM(name string) {
	s.mu.Lock()
	sl := s.lnms[name]
	delete(s.lnms, name)
	s.mu.Unlock()
	if sl == nil {
		return
	}
	sl.cancel()
	<-sl.done
}

// Sim returns the simulated hypervisor of an LNM (for fault injection).
func (s *Site) Sim(name string) *sim.Hypervisor {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.lnms[name]; sl != nil {
		h, _ := sl.LNM.Driver().(*sim.Hypervisor)
		return h
	}
	return nil
}

// LNM returns a running LNM by name.
func (s *Site) LNM(name string) *nodemgr.LNM {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.lnms[name]; sl != nil {
		return sl.LNM.LNM
	}
	return nil
}

// MetricsAddr is where LNM name serves its metrics ("" = off or no such LNM).
func (s *Site) MetricsAddr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.lnms[name]; sl != nil {
		return sl.LNM.MetricsAddr()
	}
	return ""
}

// WaitLNMs waits until n LNMs are connected to the controller.
func (s *Site) WaitLNMs(ctx context.Context, n int) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
	}
	subscribe := func() (*core.Subscription, error) {
		return s.Controller.Subscribe(core.SystemIdentity(), "", true)
	}
	ev, err := subscribe()
	if err != nil {
		return err
	}
	defer func() { s.Controller.Unsubscribe(ev) }()
	for {
		if s.Controller.State().Counts().Connected >= n {
			return nil
		}
		select {
		case <-ev.Ready():
			if _, open := ev.Take(1 << 20); !open {
				// cut off (it only wakes this loop): open another
				s.Controller.Unsubscribe(ev)
				if ev, err = subscribe(); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d LNMs: %d connected: %w", n, s.Controller.State().Counts().Connected, ctx.Err())
		}
	}
}

// Client connects a client to the site.
func (s *Site) Client(ctx context.Context, user, password string) (*client.Client, error) {
	return client.Connect(ctx, client.Config{Addr: s.Addr, CAFile: s.CAFile, ServerName: "localhost",
		User: user, Password: password, KeepAlive: s.Opts.KeepAlive, Logger: s.Opts.Logger, MinBackoff: 50 * time.Millisecond})
}

// Close stops the LNMs and the controller; nothing of the site runs after.
func (s *Site) Close() {
	s.mu.Lock()
	names := make([]string, 0, len(s.lnms))
	for n := range s.lnms {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		s.StopLNM(n)
	}
	s.cancel()
	<-s.ctlDone
}

// Check verifies the controller's state invariants (core.State.Check).
func (s *Site) Check() error { return s.Controller.State().Check() }
