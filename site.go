// Package usher assembles the rooms into a running site: a controller with
// its TLS endpoint and a set of LNMs. It is what `usher demo`, the
// benchmarks and the end-to-end tests start. It holds no logic of its own.
package usher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/transport"
)

// SiteOptions describe an embedded site.
type SiteOptions struct {
	Dir          string                   // state directory: certificates, sim state files
	Listen       string                   // controller address (default 127.0.0.1:0)
	LNMs         int                      // simulated LNMs to start
	Domain       string                   // Usher domain
	Hooks        core.Hooks               // policy; required
	Bind         func(c *core.Controller) // called once the controller exists (the Lua host binds here)
	Policy       transport.PolicyAdmin
	SimCPUs      int
	SimMemMB     int
	SimBootDelay time.Duration
	SimPersist   bool // keep sim state in files under Dir (VMs outlive LNMs)
	// NewDriver, when set, makes the VMM driver of each LNM AddLNM starts
	// (libvirt hosts in the real-hypervisor tests); otherwise LNMs are
	// simulated. address is what the LNM advertises ("" = the driver's own).
	NewDriver      func(name string) (drv nodemgr.Driver, address string, err error)
	ReportInterval time.Duration // LNM usage reports
	ScanInterval   time.Duration // LNM scans
	KeepAlive      time.Duration // yamux keepalive
	Controller     core.Config   // mechanism parameters (Domain is filled in)
	Logger         *slog.Logger
}

// Site is a running controller and its LNMs.
type Site struct {
	Opts       SiteOptions
	Addr       string
	CAFile     string
	Controller *core.Controller
	Server     *transport.ControllerServer
	CA         *transport.CA

	mu      sync.Mutex
	lnms    map[string]*siteLNM
	ctx     context.Context
	cancel  context.CancelFunc
	ctlDone chan struct{}
}

type siteLNM struct {
	LNM    *nodemgr.LNM
	Sim    *sim.Hypervisor // nil unless simulated
	Driver nodemgr.Driver
	cancel context.CancelFunc
	done   chan struct{}
}

// StartSite makes certificates (or reuses the CA in Dir), starts the
// controller and opts.LNMs simulated LNMs, and waits until they are
// connected.
func StartSite(ctx context.Context, o SiteOptions) (*Site, error) {
	if o.Hooks == nil {
		return nil, errors.New("site: no policy hooks")
	}
	if o.Dir == "" {
		return nil, errors.New("site: no state directory")
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.Domain == "" {
		o.Domain = "usher.local"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReportInterval <= 0 {
		o.ReportInterval = 5 * time.Second
	}
	if o.ScanInterval <= 0 {
		o.ScanInterval = 10 * time.Second
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
	tlsCfg, err := transport.ServerTLS(cert, key, caFile)
	if err != nil {
		return nil, err
	}
	cc := o.Controller
	cc.Domain = o.Domain
	if cc.Logger == nil {
		cc.Logger = o.Logger
	}
	c := core.New(cc, o.Hooks)
	if o.Bind != nil {
		o.Bind(c)
	}
	lim := transport.DefaultLimits()
	if o.KeepAlive > 0 {
		lim.KeepAlive = o.KeepAlive
	}
	srv := transport.NewControllerServer(c, tlsCfg, transport.ControllerOptions{
		Server:         transport.ServerOptions{Limits: lim, Logger: o.Logger},
		ReportInterval: o.ReportInterval,
		Policy:         o.Policy,
	})
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("site: listening on %s: %w", o.Listen, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Site{Opts: o, Addr: ln.Addr().String(), CAFile: caFile, Controller: c, Server: srv, CA: ca,
		lnms: map[string]*siteLNM{}, ctx: sctx, cancel: cancel, ctlDone: make(chan struct{})}
	go func() {
		defer close(s.ctlDone)
		srv.Serve(sctx, ln)
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

// AddLNM issues a certificate for name and starts a simulated LNM.
func (s *Site) AddLNM(name string) error {
	pki := filepath.Join(s.Opts.Dir, "pki")
	cert, key, err := s.CA.Issue(transport.RoleLNM, name, nil, pki)
	if err != nil {
		return err
	}
	tlsCfg, err := transport.ClientTLS(s.CAFile, cert, key, "localhost")
	if err != nil {
		return err
	}
	var hv nodemgr.Driver
	var simHV *sim.Hypervisor
	address := name + ".sim"
	if s.Opts.NewDriver != nil {
		if hv, address, err = s.Opts.NewDriver(name); err != nil {
			return err
		}
	} else {
		so := sim.Options{Node: name, Address: address, CPUs: s.Opts.SimCPUs, MemMB: s.Opts.SimMemMB, BootDelay: s.Opts.SimBootDelay}
		if s.Opts.SimPersist {
			so.StateFile = filepath.Join(s.Opts.Dir, "sim", name+".json")
			if err := os.MkdirAll(filepath.Dir(so.StateFile), 0o755); err != nil {
				return err
			}
		}
		if simHV, err = sim.New(so); err != nil {
			return err
		}
		hv = simHV
	}
	lim := transport.DefaultLimits()
	if s.Opts.KeepAlive > 0 {
		lim.KeepAlive = s.Opts.KeepAlive
	}
	l, err := nodemgr.New(nodemgr.Options{Name: name, Address: address, Controller: s.Addr, TLS: tlsCfg, Driver: hv,
		ScanInterval: s.Opts.ScanInterval, Limits: lim, Logger: s.Opts.Logger, MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second})
	if err != nil {
		hv.Close()
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sl := &siteLNM{LNM: l, Sim: simHV, Driver: hv, cancel: cancel, done: make(chan struct{})}
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
	sl.Driver.Close()
}

// Sim returns the simulated hypervisor of an LNM (for fault injection).
func (s *Site) Sim(name string) *sim.Hypervisor {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.lnms[name]; sl != nil {
		return sl.Sim
	}
	return nil
}

// LNM returns a running LNM by name.
func (s *Site) LNM(name string) *nodemgr.LNM {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.lnms[name]; sl != nil {
		return sl.LNM
	}
	return nil
}

// WaitLNMs waits until n LNMs are connected to the controller.
func (s *Site) WaitLNMs(ctx context.Context, n int) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
	}
	ev, err := s.Controller.Subscribe(core.SystemIdentity(), "", true)
	if err != nil {
		return err
	}
	defer s.Controller.Unsubscribe(ev)
	for {
		if s.Controller.State().Counts().Connected >= n {
			return nil
		}
		select {
		case <-ev.Ready():
			if _, open := ev.Take(1 << 20); !open {
				// cut off (it only wakes this loop): open another
				if ev, err = s.Controller.Subscribe(core.SystemIdentity(), "", true); err != nil {
					return err
				}
				defer s.Controller.Unsubscribe(ev)
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d LNMs: %d connected: %w", n, s.Controller.State().Counts().Connected, ctx.Err())
		}
	}
}

// Client connects a client to the site.
func (s *Site) Client(ctx context.Context, user, password string) (*client.Client, error) {
	lim := transport.DefaultLimits()
	if s.Opts.KeepAlive > 0 {
		lim.KeepAlive = s.Opts.KeepAlive
	}
	return client.Connect(ctx, client.Config{Addr: s.Addr, CAFile: s.CAFile, ServerName: "localhost",
		User: user, Password: password, Limits: lim, Logger: s.Opts.Logger, MinBackoff: 50 * time.Millisecond})
}

// Close stops the LNMs and the controller.
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
	s.Controller.Wait()
}
