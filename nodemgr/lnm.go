package nodemgr

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/transport"
)

// Options configure a local node manager.
type Options struct {
	Name         string        // node name; must match the certificate's CN
	Address      string        // advertised address (migration target)
	Controller   string        // controller address host:port
	TLS          *tls.Config   // client TLS with the LNM certificate
	Driver       Driver        // the VMM
	ScanInterval time.Duration // how often to look for missing or unexpected VMs
	Parallel     int           // VM operations run at once per batch
	Limits       transport.Limits
	MinBackoff   time.Duration // reconnect backoff bounds
	MaxBackoff   time.Duration
	// RecoveryListen is where the LNM listens for a restarted controller's
	// recovery announcement ("" = no listener; the LNM still retries on
	// its own). RecoveryTLS is its server configuration
	// (transport.RecoveryServerTLS).
	RecoveryListen string
	RecoveryTLS    *tls.Config
	Logger         *slog.Logger
}

// LNM is a local node manager: it serves the Table 2 API to the controller
// over the session it dials, reports state changes and usage, and keeps
// the cached VM objects the controller sends it.
type LNM struct {
	opts Options
	log  *slog.Logger
	drv  Driver

	mu       sync.Mutex
	cache    map[string]*core.VM     // controller's objects
	reported map[string]core.VMState // unmanaged domains already reported
	avg      map[string]*core.Averager
	nodeAvg  core.Averager
	lastStat time.Time
	usage    map[string]core.Usage
	info     core.NodeInfo

	connected atomic.Bool
	interval  atomic.Int64 // the report interval of the current session (ns)
	sessions  atomic.Int64
	kick      chan struct{} // asks the reporter for an immediate scan
	wake      chan struct{} // a recovery announcement: reconnect now
	target    atomic.Pointer[string]
	recovery  atomic.Pointer[string] // the recovery listener's address
}

// New builds an LNM.
func New(o Options) (*LNM, error) {
	if o.Driver == nil {
		return nil, errors.New("lnm: no driver")
	}
	if err := core.ValidLabel(o.Name); err != nil {
		return nil, fmt.Errorf("lnm: node name: %w", err)
	}
	if o.ScanInterval <= 0 {
		o.ScanInterval = 10 * time.Second
	}
	if o.Parallel <= 0 {
		o.Parallel = 16
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &LNM{opts: o, log: o.Logger.With("lnm", o.Name), drv: o.Driver,
		cache: map[string]*core.VM{}, reported: map[string]core.VMState{},
		avg: map[string]*core.Averager{}, usage: map[string]core.Usage{}, kick: make(chan struct{}, 1),
		wake: make(chan struct{}, 1)}, nil
}

// RecoveryAddr is the address of the recovery listener ("" if none).
func (l *LNM) RecoveryAddr() string {
	if p := l.recovery.Load(); p != nil {
		return *p
	}
	return ""
}

func (l *LNM) controllerAddr() string {
	if p := l.target.Load(); p != nil {
		return *p
	}
	return l.opts.Controller
}

// listenRecovery serves recovery announcements: each one points the LNM at
// the (possibly new) controller address and ends any backoff wait.
func (l *LNM) listenRecovery(ctx context.Context) error {
	if l.opts.RecoveryListen == "" || l.opts.RecoveryTLS == nil {
		return nil
	}
	ln, err := net.Listen("tcp", l.opts.RecoveryListen)
	if err != nil {
		return fmt.Errorf("recovery listener: %w", err)
	}
	addr := ln.Addr().String()
	l.recovery.Store(&addr)
	go transport.ServeRecovery(ctx, ln, l.opts.RecoveryTLS, l.log, func(a transport.Announcement) {
		l.log.Info("recovery announcement received", "controller", a.Controller)
		if a.Controller != "" {
			c := a.Controller
			l.target.Store(&c)
		}
		select {
		case l.wake <- struct{}{}:
		default:
		}
	})
	return nil
}

// Connected reports whether a controller session is up.
func (l *LNM) Connected() bool { return l.connected.Load() }

// Sessions counts controller sessions established so far.
func (l *LNM) Sessions() int64 { return l.sessions.Load() }

// Run connects to the controller and serves it until ctx ends, reconnecting
// with exponential backoff and jitter whenever the session drops.
func (l *LNM) Run(ctx context.Context) error {
	if err := l.listenRecovery(ctx); err != nil {
		return err
	}
	backoff := l.opts.MinBackoff
	for {
		start := time.Now()
		err := l.session(ctx)
		l.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = l.opts.MinBackoff
		}
		l.log.Warn("controller session ended; reconnecting", "err", err, "in", backoff)
		jitter := time.Duration(rand.Int64N(int64(backoff)/2 + 1))
		select {
		case <-time.After(backoff + jitter):
		case <-l.wake:
			backoff = l.opts.MinBackoff
			continue
		case <-ctx.Done():
			return nil
		}
		backoff *= 2
		if backoff > l.opts.MaxBackoff {
			backoff = l.opts.MaxBackoff
		}
	}
}

func (l *LNM) nodeInfo(ctx context.Context) (core.NodeInfo, error) {
	info, err := l.drv.NodeInfo(ctx)
	if err != nil {
		return info, fmt.Errorf("node info from %s driver: %w", l.drv.Kind(), err)
	}
	info.Name = l.opts.Name
	if l.opts.Address != "" {
		info.Address = l.opts.Address
	}
	info.Driver = l.drv.Kind()
	info.Recovery = l.RecoveryAddr()
	l.mu.Lock()
	l.info = info
	l.mu.Unlock()
	return info, nil
}

func (l *LNM) session(ctx context.Context) error {
	s, err := transport.Dial(ctx, l.controllerAddr(), l.opts.TLS, l.opts.Limits, l.log)
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetMux(l.mux())
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.Serve(sctx)
	info, err := l.nodeInfo(ctx)
	if err != nil {
		return err
	}
	info.Recovery = advertised(info.Recovery, s.LocalAddr())
	status, err := l.helloStatus(ctx)
	if err != nil {
		return fmt.Errorf("node status for registration: %w", err)
	}
	var hello core.LNMHelloReply
	hctx, hcancel := context.WithTimeout(ctx, 2*time.Minute)
	err = s.Call(hctx, core.MLNMHello, core.LNMHello{Node: info, Status: status}, &hello)
	hcancel()
	if err != nil {
		return fmt.Errorf("registering with controller: %w", err)
	}
	interval := time.Duration(hello.ReportInterval) * time.Millisecond
	if interval <= 0 {
		interval = 5 * time.Second
	}
	st, err := s.OpenStream(ctx, core.MLNMEvents, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	l.connected.Store(true)
	l.sessions.Add(1)
	l.log.Info("connected to controller", "controller", l.controllerAddr(), "report_interval", interval)
	return l.report(sctx, s, st, interval)
}

// phase is a random delay in [d/2, 3d/2): the first tick of a periodic
// timer, so that many nodes' ticks spread out.
func phase(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}

// report is the one writer of the event stream: driver events, scans and
// periodic usage reports.
func (l *LNM) report(ctx context.Context, s *transport.Session, st *transport.Stream, interval time.Duration) error {
	l.interval.Store(int64(interval))
	// The first periodic scan and report come after a random share of
	// their interval, then every interval: nodes that (re)connected
	// together — a whole site after a controller restart — do not report
	// in lockstep.
	scan := time.NewTimer(phase(l.opts.ScanInterval))
	defer scan.Stop()
	rep := time.NewTimer(phase(interval))
	defer rep.Stop()
	events := l.drv.Events()
	// No report at once: registration gave the controller the node's
	// status, and after a controller restart a whole site's first
	// reports (usage of every VM) would land on it together, while it is
	// still re-adopting.
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.Done():
			return errors.New("session closed")
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ch := l.diffOne(ev); ch != nil {
				if err := st.Send("report", core.LNMReport{Changes: []core.Domain{*ch}}); err != nil {
					return err
				}
			}
		case <-l.kick:
			if err := l.sendScan(ctx, st); err != nil {
				return err
			}
		case <-scan.C:
			scan.Reset(l.opts.ScanInterval)
			if err := l.sendScan(ctx, st); err != nil {
				return err
			}
		case <-rep.C:
			rep.Reset(interval)
			if err := l.sendUsage(ctx, st); err != nil {
				return err
			}
		}
	}
}

// The report loop is the only writer of the event stream, and the
// controller takes an LNM whose stream is silent for three report
// intervals as gone. A hypervisor call that hangs (libvirtd restarting, a
// slow host) must not silence it: each scan and sample here gets one report
// interval, and a failure sends a heartbeat instead.
func (l *LNM) driverCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := time.Duration(l.interval.Load())
	if d <= 0 {
		d = 5 * time.Second
	}
	return context.WithTimeout(ctx, max(d, 100*time.Millisecond))
}

func (l *LNM) sendScan(ctx context.Context, st *transport.Stream) error {
	ctx, cancel := l.driverCtx(ctx)
	defer cancel()
	changes, err := l.scan(ctx)
	if err != nil {
		l.log.Warn("scan failed", "err", err)
		return st.Send("beat", struct{}{})
	}
	if len(changes) == 0 {
		return nil
	}
	return st.Send("report", core.LNMReport{Changes: changes})
}

func (l *LNM) sendUsage(ctx context.Context, st *transport.Stream) error {
	ctx, cancel := l.driverCtx(ctx)
	defer cancel()
	r, err := l.sample(ctx)
	if err != nil {
		l.log.Warn("usage sample failed", "err", err)
		return st.Send("beat", struct{}{})
	}
	return st.Send("report", r)
}

// settled reports whether a cached state needs no domain to exist.
func settled(s core.VMState) bool {
	switch s {
	case core.StatePending, core.StateStarting, core.StateDestroyed, core.StateMissing, core.StateFailed, core.StateMigrating:
		return true
	}
	return false
}

// diffOne turns a hypervisor event into a change to report, if the cached
// object disagrees.
func (l *LNM) diffOne(ev DomainEvent) *core.Domain {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.cache[ev.Name]
	if ev.Gone {
		if c != nil {
			if settled(c.State) {
				return nil
			}
			reason := ev.Reason
			if reason == "" {
				reason = "vanished from the hypervisor"
			}
			return &core.Domain{Name: ev.Name, State: core.StateMissing, Reason: reason}
		}
		if _, ok := l.reported[ev.Name]; ok {
			delete(l.reported, ev.Name)
			return &core.Domain{Name: ev.Name, State: core.StateDestroyed, Reason: ev.Reason}
		}
		return nil
	}
	if c != nil {
		// starting, pending and migrating objects belong to a call in
		// progress, which reports its own outcome
		if c.State == ev.State || c.State == core.StateMigrating || c.State == core.StateStarting || c.State == core.StatePending {
			return nil
		}
		return &core.Domain{Name: ev.Name, State: ev.State, Reason: ev.Reason, MemMB: c.MemMB, VCPUs: c.VCPUs, Cached: c.Clone()}
	}
	if l.reported[ev.Name] == ev.State {
		return nil
	}
	l.reported[ev.Name] = ev.State
	return &core.Domain{Name: ev.Name, State: ev.State, Reason: ev.Reason}
}

// scan compares every domain with the cached objects and returns the
// differences: the fallback for missed or unsupported hypervisor events.
func (l *LNM) scan(ctx context.Context) ([]core.Domain, error) {
	doms, err := l.drv.List(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []core.Domain
	seen := make(map[string]bool, len(doms))
	for _, d := range doms {
		seen[d.Name] = true
		if c := l.cache[d.Name]; c != nil {
			if c.State != d.State && c.State != core.StateMigrating && c.State != core.StateStarting {
				out = append(out, core.Domain{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs, Cached: c.Clone()})
			}
			continue
		}
		if l.reported[d.Name] != d.State {
			l.reported[d.Name] = d.State
			out = append(out, core.Domain{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs})
		}
	}
	for n, c := range l.cache {
		if !seen[n] && !settled(c.State) {
			out = append(out, core.Domain{Name: n, State: core.StateMissing, Reason: "not found on the hypervisor by a scan"})
		}
	}
	for n := range l.reported {
		if !seen[n] {
			delete(l.reported, n)
			out = append(out, core.Domain{Name: n, State: core.StateDestroyed, Reason: "gone"})
		}
	}
	return out, nil
}

func (l *LNM) sample(ctx context.Context) (core.LNMReport, error) {
	stats, err := l.drv.Stats(ctx)
	if err != nil {
		return core.LNMReport{}, err
	}
	doms, err := l.drv.List(ctx)
	if err != nil {
		return core.LNMReport{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	dt := now.Sub(l.lastStat)
	l.lastStat = now
	l.nodeAvg.Add(stats.Node, dt)
	usage := make(map[string]core.Usage, len(stats.Domains))
	for n, s := range stats.Domains {
		a := l.avg[n]
		if a == nil {
			a = &core.Averager{}
			l.avg[n] = a
		}
		a.Add(s, dt)
		usage[n] = a.Usage()
	}
	for n := range l.avg {
		if _, ok := stats.Domains[n]; !ok {
			delete(l.avg, n)
		}
	}
	l.usage = usage
	return core.LNMReport{Node: l.statusLocked(doms, now), Usage: usage}, nil
}

// statusLocked is the node's status: its usage averages and what the
// domains leave free. The caller holds mu.
func (l *LNM) statusLocked(doms []DomainInfo, now time.Time) *core.NodeStatus {
	st := core.NodeStatus{Usage: l.nodeAvg.Usage(), ReportedAt: now.UnixMilli(), FreeMemMB: l.info.MemMB, FreeVCPUs: l.info.CPUs}
	for _, d := range doms {
		if d.State == core.StateRunning || d.State == core.StatePaused {
			st.VMs++
			st.FreeMemMB -= d.MemMB
			st.FreeVCPUs -= d.VCPUs
		}
	}
	return &st
}

// helloStatus is the node's status for registration. A node that has
// sampled before (reconnecting: after a controller restart the whole site
// does at once) sends the averages it has, with capacity from a fresh
// domain list, and takes no new sample of every VM's usage; its next
// periodic report does. A node's first registration samples.
func (l *LNM) helloStatus(ctx context.Context) (*core.NodeStatus, error) {
	l.mu.Lock()
	sampled := !l.lastStat.IsZero()
	l.mu.Unlock()
	if !sampled {
		r, err := l.sample(ctx)
		return r.Node, err
	}
	doms, err := l.drv.List(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked(doms, time.Now()), nil
}

// ---------------------------------------------------------------------------
// Table 2: the remote API served to the controller

func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := transport.Unmarshal(raw, v); err != nil {
		return transport.Errorf(transport.CodeBadRequest, "malformed arguments: %v", err)
	}
	return nil
}

func handle[A any](f func(ctx context.Context, a A) (any, error)) transport.Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a A
		if err := decodeArgs(raw, &a); err != nil {
			return nil, err
		}
		return f(ctx, a)
	}
}

type none struct{}

func (l *LNM) mux() *transport.Mux {
	m := transport.NewMux()
	m.Handle(core.LGetNodeInfo, handle(func(ctx context.Context, _ none) (any, error) {
		return l.nodeInfo(ctx)
	}))
	m.Handle(core.LGetNodeStatus, handle(func(ctx context.Context, _ none) (any, error) {
		r, err := l.sample(ctx)
		if err != nil {
			return nil, err
		}
		return r.Node, nil
	}))
	m.Handle(core.LListVMs, handle(func(ctx context.Context, _ none) (any, error) {
		doms, err := l.domains(ctx, nil, true)
		return core.ListVMsReply{Domains: doms}, err
	}))
	m.Handle(core.LGetDetails, handle(func(ctx context.Context, a core.NamesArgs) (any, error) {
		doms, err := l.domains(ctx, a.Names, false)
		return core.DetailsReply{Domains: doms}, err
	}))
	m.Handle(core.LGetStatus, handle(func(ctx context.Context, a core.NamesArgs) (any, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		rep := core.DetailsReply{Usage: map[string]core.Usage{}}
		for _, n := range a.Names {
			if u, ok := l.usage[n]; ok {
				rep.Usage[n] = u
			}
		}
		return rep, nil
	}))
	m.Handle(core.LReceive, handle(func(ctx context.Context, a core.ReceiveArgs) (any, error) {
		l.receive(a)
		return struct{}{}, nil
	}))
	m.Handle(core.LStart, handle(func(ctx context.Context, a core.LNMStartArgs) (any, error) {
		return l.start(ctx, a), nil
	}))
	m.Handle(core.LOpOn, handle(func(ctx context.Context, a core.LNMOpArgs) (any, error) {
		if _, err := core.ParseOp(string(a.Op)); err != nil {
			return nil, transport.Errorf(transport.CodeBadRequest, "%v", err)
		}
		return l.opOn(ctx, a), nil
	}))
	m.Handle(core.LPrepare, handle(func(ctx context.Context, a core.LNMStartArgs) (any, error) {
		return l.prepare(ctx, a), nil
	}))
	m.Handle(core.LMigrate, handle(func(ctx context.Context, a core.LNMMigrateArgs) (any, error) {
		return l.migrate(ctx, a), nil
	}))
	return m
}

// receive stores cached VM objects: the controller's acknowledgement.
func (l *LNM) receive(a core.ReceiveArgs) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a.Sync {
		keep := make(map[string]bool, len(a.VMs)+len(a.States))
		for _, v := range a.VMs {
			if v != nil {
				keep[v.Name] = true
			}
		}
		for _, u := range a.States {
			keep[u.Name] = true
		}
		for n := range l.cache {
			if !keep[n] {
				delete(l.cache, n)
			}
		}
	}
	for _, n := range a.Forget {
		if n == "*" {
			l.cache = map[string]*core.VM{}
			continue
		}
		delete(l.cache, n)
	}
	for _, v := range a.VMs {
		if v == nil || v.Name == "" {
			continue
		}
		if old := l.cache[v.Name]; old != nil && old.Version > v.Version {
			continue
		}
		l.cache[v.Name] = v
		delete(l.reported, v.Name)
	}
	for _, u := range a.States {
		if c := l.cache[u.Name]; c != nil && c.Version <= u.Version {
			c.State, c.Reason, c.Version = u.State, u.Reason, u.Version
		}
	}
}

func specOf(v *core.VM, args map[string]string) Spec {
	return Spec{Name: v.Name, MemMB: v.MemMB, VCPUs: v.VCPUs, Data: v.Data, Args: args}
}

// parallel runs f for n items, at most Parallel at once, in the calling
// goroutine's batch (no goroutine per VM beyond the bound).
func (l *LNM) parallel(n int, f func(i int)) {
	sem := make(chan struct{}, l.opts.Parallel)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}

func (l *LNM) start(ctx context.Context, a core.LNMStartArgs) core.LNMResults {
	l.mu.Lock()
	for _, v := range a.VMs {
		if v != nil {
			l.cache[v.Name] = v.Clone()
		}
	}
	l.mu.Unlock()
	res := make([]core.VMResult, len(a.VMs))
	l.parallel(len(a.VMs), func(i int) {
		v := a.VMs[i]
		if v == nil {
			return
		}
		err := l.drv.Start(ctx, specOf(v, a.Args))
		if err != nil {
			l.mu.Lock()
			delete(l.cache, v.Name)
			l.mu.Unlock()
			res[i] = core.VMResult{Name: v.Name, Error: err.Error()}
			return
		}
		// The start returned: from here on this LNM watches the VM. Its
		// cached object takes the update the controller is about to make
		// (the result's Cached version says so), which spares the
		// acknowledgement when the two agree.
		var cached uint64
		l.mu.Lock()
		if c := l.cache[v.Name]; c != nil && (c.State == core.StateStarting || c.State == core.StatePending) {
			c.State, c.Reason = core.StateRunning, core.ReasonStarted
			c.Version++
			cached = c.Version
		}
		l.mu.Unlock()
		res[i] = core.VMResult{Name: v.Name, OK: true, State: core.StateRunning, Cached: cached}
	})
	return core.LNMResults{Results: res}
}

// stateAfter is the state an operation leaves a domain in.
func stateAfter(op core.Op) core.VMState {
	switch op {
	case core.OpPause:
		return core.StatePaused
	case core.OpShutdown:
		return core.StateShutoff
	case core.OpHibernate:
		return core.StateHibernated
	case core.OpDestroy:
		return core.StateDestroyed
	}
	return core.StateRunning
}

func (l *LNM) opOn(ctx context.Context, a core.LNMOpArgs) core.LNMResults {
	res := make([]core.VMResult, len(a.Names))
	l.parallel(len(a.Names), func(i int) {
		n := a.Names[i]
		if err := l.drv.Op(ctx, n, a.Op, a.Args); err != nil {
			res[i] = core.VMResult{Name: n, Error: fmt.Sprintf("%s: %v", a.Op, err)}
			return
		}
		st := stateAfter(a.Op)
		if a.Op == core.OpDestroy {
			l.mu.Lock()
			delete(l.cache, n)
			l.mu.Unlock()
		}
		res[i] = core.VMResult{Name: n, OK: true, State: st}
	})
	return core.LNMResults{Results: res}
}

func (l *LNM) prepare(ctx context.Context, a core.LNMStartArgs) core.LNMResults {
	abort := a.Args["abort"] == "1"
	res := make([]core.VMResult, len(a.VMs))
	l.parallel(len(a.VMs), func(i int) {
		v := a.VMs[i]
		if v == nil {
			return
		}
		var err error
		if abort {
			err = l.drv.AbortIncoming(ctx, v.Name)
			l.mu.Lock()
			if c := l.cache[v.Name]; c != nil && c.State == core.StateMigrating {
				delete(l.cache, v.Name)
			}
			l.mu.Unlock()
		} else {
			c := v.Clone()
			c.State = core.StateMigrating
			l.mu.Lock()
			l.cache[v.Name] = c
			l.mu.Unlock()
			err = l.drv.PrepareIncoming(ctx, specOf(v, a.Args))
			if err != nil {
				l.mu.Lock()
				delete(l.cache, v.Name)
				l.mu.Unlock()
			}
		}
		if err != nil {
			res[i] = core.VMResult{Name: v.Name, Error: err.Error()}
			return
		}
		res[i] = core.VMResult{Name: v.Name, OK: true}
	})
	return core.LNMResults{Results: res}
}

func (l *LNM) migrate(ctx context.Context, a core.LNMMigrateArgs) core.LNMResults {
	res := make([]core.VMResult, len(a.Names))
	l.parallel(len(a.Names), func(i int) {
		n := a.Names[i]
		// Mark the cached object so a scan mid-migration reports nothing.
		l.mu.Lock()
		prev := l.cache[n]
		if prev != nil {
			c := prev.Clone()
			c.State = core.StateMigrating
			l.cache[n] = c
		}
		l.mu.Unlock()
		err := l.drv.Migrate(ctx, n, a.Target, a.Address)
		l.mu.Lock()
		if err != nil {
			if prev != nil {
				l.cache[n] = prev
			}
		} else {
			delete(l.cache, n)
		}
		l.mu.Unlock()
		if err != nil {
			res[i] = core.VMResult{Name: n, Error: err.Error()}
			return
		}
		st := core.StateRunning
		if prev != nil && prev.State == core.StatePaused {
			st = core.StatePaused
		}
		res[i] = core.VMResult{Name: n, OK: true, State: st}
	})
	return core.LNMResults{Results: res}
}

// Scan asks the reporter for an immediate scan (tests, CLI).
func (l *LNM) Scan() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// CachedVMs returns copies of the cached VM objects (for tests and status).
func (l *LNM) CachedVMs() []*core.VM {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*core.VM, 0, len(l.cache))
	for _, v := range l.cache {
		out = append(out, v.Clone())
	}
	return out
}

// advertised turns a listener address on an unspecified host (":7071",
// "0.0.0.0:7071") into one the controller can dial: the local IP of the
// connection to the controller.
func advertised(listen string, local net.Addr) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || listen == "" {
		return listen
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return listen
	}
	if ta, ok := local.(*net.TCPAddr); ok {
		return net.JoinHostPort(ta.IP.String(), port)
	}
	return listen
}

// domains lists the node's domains (only names, when given) with the cached
// VM object of each. seen marks them as reported to the controller (a full
// listing at registration makes later scans report only changes).
func (l *LNM) domains(ctx context.Context, names []string, seen bool) ([]core.Domain, error) {
	doms, err := l.drv.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	var want map[string]bool
	if len(names) > 0 {
		want = make(map[string]bool, len(names))
		for _, n := range names {
			want[n] = true
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]core.Domain, 0, len(doms))
	for _, d := range doms {
		if want != nil && !want[d.Name] {
			continue
		}
		cd := core.Domain{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs}
		if c := l.cache[d.Name]; c != nil {
			cd.Cached = c.Clone()
		}
		if seen {
			l.reported[d.Name] = d.State
		}
		out = append(out, cd)
	}
	return out, nil
}
