package nodemgr

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/transport"
)

// Options configure a local node manager.
type Options struct {
	Name         string        // node name; must match the certificate's CN
	Address      string        // advertised address (migration target)
	Controller   string        // controller address host:port; several, comma-separated, for highly available controllers (tried in turn)
	TLS          *tls.Config   // client TLS with the LNM certificate
	Driver       Driver        // the VMM
	ScanInterval time.Duration // how often to look for missing or unexpected guests
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

// LNM is a local node manager: it serves the Table 2 API (api.Node) to the
// controller over the session it dials, reports state changes and usage,
// and keeps the cached VM objects the controller sends it. Run owns every
// goroutine the LNM starts and returns once they have ended.
type LNM struct {
	opts Options
	log  *slog.Logger
	drv  Driver
	mux  *transport.Mux

	mu       sync.Mutex
	cache    map[string]*api.VM     // controller's objects
	reported map[string]api.VMState // unmanaged guests already reported
	avg      map[string]*Averager
	nodeAvg  Averager
	lastStat time.Time
	usage    map[string]api.Usage
	info     api.NodeInfo

	connected atomic.Bool
	interval  atomic.Int64 // the report interval of the current session (ns)
	sessions  atomic.Int64
	kick      chan struct{} // asks the reporter for an immediate scan
	wake      chan struct{} // a recovery announcement: reconnect now
	target    atomic.Pointer[string]
	next      atomic.Uint32 // which of the configured controller addresses is tried
	// Leadership terms (highly available controllers): the highest seen,
	// and the current session's (-1 until its registration is answered).
	// A session whose term is older than the highest seen is refused
	// every call and closed: a deposed leader cannot act on this node.
	maxTerm, sessTerm atomic.Int64
	endSession        atomic.Pointer[context.CancelFunc]
	recovery          atomic.Pointer[string] // the recovery listener's address
}

var _ api.Node = (*LNM)(nil)

// New builds an LNM.
func New(o Options) (*LNM, error) {
	if o.Driver == nil {
		return nil, errors.New("lnm: no driver")
	}
	if err := api.ValidLabel(o.Name); err != nil {
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
	l := &LNM{opts: o, log: o.Logger.With("lnm", o.Name), drv: o.Driver,
		cache: map[string]*api.VM{}, reported: map[string]api.VMState{},
		avg: map[string]*Averager{}, usage: map[string]api.Usage{}, kick: make(chan struct{}, 1),
		wake: make(chan struct{}, 1)}
	l.mux = nodeMux(l, l.console, l.staleTerm)
	return l, nil
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
	addrs := strings.Split(l.opts.Controller, ",")
	return strings.TrimSpace(addrs[int(l.next.Load())%len(addrs)])
}

// nextController is called when a session could not be had or ended: an
// announced address is forgotten (its controller may be gone: the next
// announcement brings it back), and the next configured one is tried.
func (l *LNM) nextController() {
	if l.target.Swap(nil) == nil {
		l.next.Add(1)
	}
}

// listenRecovery starts the recovery listener: each announcement points
// the LNM at the (possibly new) controller address and ends any backoff
// wait. It runs until ctx ends, in wg.
func (l *LNM) listenRecovery(ctx context.Context, wg *sync.WaitGroup) error {
	if l.opts.RecoveryListen == "" || l.opts.RecoveryTLS == nil {
		return nil
	}
	ln, err := net.Listen("tcp", l.opts.RecoveryListen)
	if err != nil {
		return fmt.Errorf("recovery listener: %w", err)
	}
	addr := ln.Addr().String()
	l.recovery.Store(&addr)
	wg.Add(1)
	go func() {
		defer wg.Done()
		transport.ServeRecovery(ctx, ln, l.opts.RecoveryTLS, l.log, func(a transport.Announcement) {
			l.log.Info("recovery announcement received", "controller", a.Controller, "term", a.Term)
			if a.Term < l.maxTerm.Load() {
				l.log.Warn("announcement from a controller of an older term ignored", "controller", a.Controller, "term", a.Term, "seen", l.maxTerm.Load())
				return
			}
			if l.raiseTerm(a.Term) {
				// A newer leader: the current session's controller may no
				// longer act here. A registration under way (term -1) is
				// left to finish: its reply's term is checked against the
				// newest seen (it may well be with the new leader).
				if end := l.endSession.Load(); end != nil && l.sessTerm.Load() >= 0 && l.sessTerm.Load() < a.Term {
					(*end)()
				}
			}
			if a.Controller != "" {
				c := a.Controller
				l.target.Store(&c)
			}
			select {
			case l.wake <- struct{}{}:
			default:
			}
		})
	}()
	return nil
}

// Connected reports whether a controller session is up.
func (l *LNM) Connected() bool { return l.connected.Load() }

// Sessions counts controller sessions established so far.
func (l *LNM) Sessions() int64 { return l.sessions.Load() }

// Run connects to the controller and serves it until ctx ends, reconnecting
// with exponential backoff and jitter whenever the session drops. It
// returns once everything it started has ended.
func (l *LNM) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := l.listenRecovery(ctx, &wg); err != nil {
		return err
	}
	bo := transport.NewBackoff(l.opts.MinBackoff, l.opts.MaxBackoff)
	for {
		start := time.Now()
		err := l.session(ctx)
		wasUp := l.connected.Swap(false)
		if ctx.Err() != nil {
			return nil
		}
		redirected := errors.Is(err, errRedirected)
		if !wasUp && !redirected {
			// No session could be had there: another controller (a
			// dead leader's successor, for highly available ones).
			l.nextController()
		}
		if time.Since(start) > 10*time.Second {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		if wasUp && !redirected && strings.Contains(l.opts.Controller, ",") {
			// Highly available controllers: a leader's session ended (it
			// died or stepped down). Ask the next one (after the usual,
			// jittered wait: a whole site asking one standby at the same
			// instant would queue in its TLS handshakes): a standby holds
			// the registration until the election ends and names the
			// leader (itself, when it won).
			l.nextController()
		}
		if redirected {
			// A standby named the leader: go there (after the shortest
			// wait, should two standbys name each other).
			wait = l.opts.MinBackoff
		}
		l.log.Warn("controller session ended; reconnecting", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-l.wake:
			bo.Reset()
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
}

func (l *LNM) nodeInfo(ctx context.Context) (api.NodeInfo, error) {
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
	defer l.mu.Unlock()
	l.info = info
	return info, nil
}

// session runs one controller session: registration, then the report
// loop, until either side ends it. The session's goroutines have ended
// when it returns.
func (l *LNM) session(ctx context.Context) error {
	s, err := transport.Dial(ctx, l.controllerAddr(), l.opts.TLS, l.opts.Limits, l.log)
	if err != nil {
		return err
	}
	s.SetMux(l.mux)
	l.sessTerm.Store(-1)
	sctx, cancel := context.WithCancel(ctx)
	l.endSession.Store(&cancel)
	defer l.endSession.Store(nil)
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.Serve(sctx)
	}()
	defer func() {
		cancel()
		s.Close()
		<-served
		s.Wait()
	}()
	info, err := l.nodeInfo(ctx)
	if err != nil {
		return err
	}
	info.Recovery = advertised(info.Recovery, s.LocalAddr())
	status, err := l.helloStatus(ctx)
	if err != nil {
		return fmt.Errorf("node status for registration: %w", err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 2*time.Minute)
	hello, err := transport.Call(hctx, s, api.MHello, api.Hello{Node: info, Status: *status, MinTerm: l.maxTerm.Load()})
	hcancel()
	var nl *api.Error
	// (A standby that names itself has just been elected: its address
	// serves as leader a moment later.)
	if errors.As(err, &nl) && nl.Code == api.CodeNotLeader && nl.Leader != "" {
		leader := nl.Leader
		l.target.Store(&leader)
		return fmt.Errorf("%w: %s", errRedirected, leader)
	}
	if err != nil {
		return fmt.Errorf("registering with controller: %w", err)
	}
	if hello.Term < l.maxTerm.Load() {
		return fmt.Errorf("controller leads in term %d, older than term %d seen: not serving it", hello.Term, l.maxTerm.Load())
	}
	l.raiseTerm(hello.Term)
	l.sessTerm.Store(hello.Term)
	interval := time.Duration(hello.ReportInterval) * time.Millisecond
	if interval <= 0 {
		interval = 5 * time.Second
	}
	st, err := transport.OpenStream(ctx, s, api.MReports, api.Empty{})
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

// report is the one writer of the report stream: driver events, scans and
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
				if err := st.Send("report", api.Report{Changes: []api.Guest{*ch}}); err != nil {
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

// The report loop is the only writer of the report stream, and the
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
	return st.Send("report", api.Report{Changes: changes})
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

// settled reports whether a cached state needs no guest to exist.
func settled(s api.VMState) bool {
	switch s {
	case api.StatePending, api.StateStarting, api.StateDestroyed, api.StateMissing, api.StateFailed, api.StateMigrating:
		return true
	}
	return false
}

// diffOne turns a hypervisor event into a change to report, if the cached
// object disagrees.
func (l *LNM) diffOne(ev GuestEvent) *api.Guest {
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
			return &api.Guest{Name: ev.Name, State: api.StateMissing, Reason: reason}
		}
		if _, ok := l.reported[ev.Name]; ok {
			delete(l.reported, ev.Name)
			return &api.Guest{Name: ev.Name, State: api.StateDestroyed, Reason: ev.Reason}
		}
		return nil
	}
	if c != nil {
		// starting, pending and migrating objects belong to a call in
		// progress, which reports its own outcome
		if c.State == ev.State || c.State == api.StateMigrating || c.State == api.StateStarting || c.State == api.StatePending {
			return nil
		}
		return &api.Guest{Name: ev.Name, State: ev.State, Reason: ev.Reason, MemMB: c.MemMB, VCPUs: c.VCPUs, Cached: c.Clone()}
	}
	if l.reported[ev.Name] == ev.State {
		return nil
	}
	l.reported[ev.Name] = ev.State
	return &api.Guest{Name: ev.Name, State: ev.State, Reason: ev.Reason}
}

// scan compares every guest with the cached objects and returns the
// differences: the fallback for missed or unsupported hypervisor events.
func (l *LNM) scan(ctx context.Context) ([]api.Guest, error) {
	doms, err := l.drv.List(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []api.Guest
	seen := make(map[string]bool, len(doms))
	for _, d := range doms {
		seen[d.Name] = true
		if c := l.cache[d.Name]; c != nil {
			if c.State != d.State && c.State != api.StateMigrating && c.State != api.StateStarting {
				out = append(out, api.Guest{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs, Cached: c.Clone()})
			}
			continue
		}
		if l.reported[d.Name] != d.State {
			l.reported[d.Name] = d.State
			out = append(out, api.Guest{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs})
		}
	}
	for n, c := range l.cache {
		if !seen[n] && !settled(c.State) {
			out = append(out, api.Guest{Name: n, State: api.StateMissing, Reason: "not found on the hypervisor by a scan"})
		}
	}
	for n := range l.reported {
		if !seen[n] {
			delete(l.reported, n)
			out = append(out, api.Guest{Name: n, State: api.StateDestroyed, Reason: "gone"})
		}
	}
	return out, nil
}

func (l *LNM) sample(ctx context.Context) (api.Report, error) {
	stats, err := l.drv.Stats(ctx)
	if err != nil {
		return api.Report{}, err
	}
	doms, err := l.drv.List(ctx)
	if err != nil {
		return api.Report{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	dt := now.Sub(l.lastStat)
	l.lastStat = now
	l.nodeAvg.Add(stats.Node, dt)
	usage := make(map[string]api.Usage, len(stats.Guests))
	for n, s := range stats.Guests {
		a := l.avg[n]
		if a == nil {
			a = &Averager{}
			l.avg[n] = a
		}
		a.Add(s, dt)
		usage[n] = a.Usage()
	}
	for n := range l.avg {
		if _, ok := stats.Guests[n]; !ok {
			delete(l.avg, n)
		}
	}
	l.usage = usage
	return api.Report{Node: l.statusLocked(doms, now), Usage: usage}, nil
}

// statusLocked is the node's status: its usage averages and what the
// guests leave free. The caller holds mu.
func (l *LNM) statusLocked(doms []GuestInfo, now time.Time) *api.NodeStatus {
	st := api.NodeStatus{Usage: l.nodeAvg.Usage(), ReportedAt: now.UnixMilli(), FreeMemMB: l.info.MemMB, FreeVCPUs: l.info.CPUs}
	for _, d := range doms {
		if d.State == api.StateRunning || d.State == api.StatePaused {
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
// guest list, and takes no new sample of every VM's usage; its next
// periodic report does. A node's first registration samples.
func (l *LNM) helloStatus(ctx context.Context) (*api.NodeStatus, error) {
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
// Table 2: the remote API served to the controller (api.Node)

// errRedirected ends a session with a standby controller that named the
// leader: the next session goes there at once.
var errRedirected = errors.New("redirected to the leader")

// raiseTerm records a leadership term seen; it reports whether it is
// newer than any before.
func (l *LNM) raiseTerm(t int64) bool {
	for {
		cur := l.maxTerm.Load()
		if t <= cur {
			return false
		}
		if l.maxTerm.CompareAndSwap(cur, t) {
			return true
		}
	}
}

// staleTerm says why the current session's controller may not act here
// (nil: it may): it registered in a term older than one since seen.
func (l *LNM) staleTerm() error {
	if st, max := l.sessTerm.Load(), l.maxTerm.Load(); st >= 0 && st < max {
		return api.Errorf(api.ErrForbidden, "this controller leads in term %d; a newer leader (term %d) exists", st, max)
	}
	return nil
}

// nodeMux registers every method of api.Node once, against the link's
// declarations; only the controller (the peer this LNM dialled) calls them.
func nodeMux(n api.Node, console func(ctx context.Context, a api.ConsoleArgs, st *transport.Stream) error, stale func() error) *transport.Mux {
	m := transport.NewMux(func(ctx context.Context, s *transport.Session, method string, a api.Access) error {
		if a != api.FromController {
			return api.Errorf(api.ErrForbidden, "%s is for %s", method, a)
		}
		return stale()
	})
	transport.Handle(m, api.LGetNodeInfo, func(ctx context.Context, _ api.Empty) (api.NodeInfo, error) { return n.NodeInfo(ctx) })
	transport.Handle(m, api.LGetNodeStatus, func(ctx context.Context, _ api.Empty) (api.NodeStatus, error) { return n.NodeStatus(ctx) })
	transport.Handle(m, api.LListGuests, func(ctx context.Context, _ api.Empty) (api.GuestsReply, error) { return n.ListGuests(ctx) })
	transport.Handle(m, api.LGetDetails, n.Details)
	transport.Handle(m, api.LGetStatus, n.Status)
	transport.Handle(m, api.LReceive, func(ctx context.Context, a api.ReceiveArgs) (api.Empty, error) { return api.Empty{}, n.Receive(ctx, a) })
	transport.Handle(m, api.LSync, func(ctx context.Context, a api.ReceiveArgs) (api.Empty, error) { return api.Empty{}, n.Sync(ctx, a) })
	transport.Handle(m, api.LForget, func(ctx context.Context, a api.NamesArgs) (api.Empty, error) { return api.Empty{}, n.Forget(ctx, a) })
	transport.Handle(m, api.LStart, n.Start)
	transport.Handle(m, api.LOpOn, n.OpOn)
	transport.Handle(m, api.LPrepareMigration, n.PrepareMigration)
	transport.Handle(m, api.LAbortMigration, n.AbortMigration)
	transport.Handle(m, api.LMigrate, n.Migrate)
	transport.HandleStream(m, api.LConsole, console)
	return m
}

// console serves api.LConsole: the log's tail, then (unless LogOnly) the
// guest's serial console, both ways, until either side ends. Only guests
// the controller placed here (cached objects) have their console served.
func (l *LNM) console(ctx context.Context, a api.ConsoleArgs, st *transport.Stream) error {
	defer st.Close()
	fail := func(err error) error {
		st.Send(api.ConsoleFrameError, api.AsError(err))
		return err
	}
	if err := a.Validate(); err != nil {
		return fail(err)
	}
	c, ok := l.drv.(Consoler)
	if !ok {
		return fail(api.Errorf(api.ErrBadRequest, "console: the %s driver of node %s has no consoles", l.drv.Kind(), l.opts.Name))
	}
	l.mu.Lock()
	_, managed := l.cache[a.VM]
	l.mu.Unlock()
	if !managed {
		return fail(api.Errorf(api.ErrNotFound, "console: node %s holds no VM %s", l.opts.Name, a.VM))
	}
	if a.Tail > 0 || a.LogOnly {
		tail := a.Tail
		if tail == 0 {
			tail = api.MaxConsoleTail
		}
		b, err := c.ConsoleLog(ctx, a.VM, tail)
		if err != nil {
			return fail(api.Errorf(api.ErrBadRequest, "console: %v", err))
		}
		for len(b) > 0 {
			n := min(len(b), api.MaxConsoleFrame)
			if err := st.Send(api.ConsoleFrameData, api.ConsoleData{Data: b[:n]}); err != nil {
				return err
			}
			b = b[n:]
		}
		if a.LogOnly {
			return st.Send(api.ConsoleFrameEOF, struct{}{})
		}
	}
	rw, err := c.Console(ctx, a.VM)
	if err != nil {
		return fail(api.Errorf(api.ErrBadRequest, "console: %v", err))
	}
	if err := st.Send(api.ConsoleFrameReady, struct{}{}); err != nil {
		rw.Close()
		return err
	}
	l.log.Info("console attached", "vm", a.VM)
	err = transport.ConsoleBridge(ctx, st, rw, transport.SessionFrom(ctx).Limits().KeepAlive)
	l.log.Info("console detached", "vm", a.VM, "err", err)
	return err
}

// NodeInfo implements api.Node (get_node_info).
func (l *LNM) NodeInfo(ctx context.Context) (api.NodeInfo, error) { return l.nodeInfo(ctx) }

// NodeStatus implements api.Node (get_node_status): a fresh sample.
func (l *LNM) NodeStatus(ctx context.Context) (api.NodeStatus, error) {
	r, err := l.sample(ctx)
	if err != nil {
		return api.NodeStatus{}, err
	}
	return *r.Node, nil
}

// ListGuests implements api.Node: every guest with its cached object; the
// listing counts as reported (registration).
func (l *LNM) ListGuests(ctx context.Context) (api.GuestsReply, error) {
	g, err := l.guests(ctx, nil, true)
	return api.GuestsReply{Guests: g}, err
}

// Details implements api.Node (get_details).
func (l *LNM) Details(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error) {
	if len(a.Names) == 0 {
		return api.GuestsReply{}, nil
	}
	g, err := l.guests(ctx, a.Names, false)
	return api.GuestsReply{Guests: g}, err
}

// Status implements api.Node (get_status): usage averages.
func (l *LNM) Status(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rep := api.GuestsReply{Usage: map[string]api.Usage{}}
	for _, n := range a.Names {
		if u, ok := l.usage[n]; ok {
			rep.Usage[n] = u
		}
	}
	return rep, nil
}

// Receive implements api.Node: the controller's acknowledgement, objects
// whole or their state part.
func (l *LNM) Receive(ctx context.Context, a api.ReceiveArgs) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.receiveLocked(a)
	return nil
}

// Sync implements api.Node: the objects named are the whole cache.
func (l *LNM) Sync(ctx context.Context, a api.ReceiveArgs) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
	l.receiveLocked(a)
	return nil
}

// Forget implements api.Node: cached objects the controller dropped.
func (l *LNM) Forget(ctx context.Context, a api.NamesArgs) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range a.Names {
		delete(l.cache, n)
	}
	return nil
}

func (l *LNM) receiveLocked(a api.ReceiveArgs) {
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

func specOf(v *api.VM) Spec {
	return Spec{Name: v.Name, MemMB: v.MemMB, VCPUs: v.VCPUs, Data: v.Data}
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

// Start implements api.Node.
func (l *LNM) Start(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	l.mu.Lock()
	for _, v := range a.VMs {
		if v != nil {
			l.cache[v.Name] = v.Clone()
		}
	}
	l.mu.Unlock()
	res := make([]api.VMResult, len(a.VMs))
	l.parallel(len(a.VMs), func(i int) {
		v := a.VMs[i]
		if v == nil {
			return
		}
		err := l.drv.Start(ctx, specOf(v))
		if err != nil {
			l.mu.Lock()
			delete(l.cache, v.Name)
			l.mu.Unlock()
			res[i] = api.VMResult{Name: v.Name, Error: err.Error()}
			return
		}
		// The start returned: from here on this LNM watches the VM. Its
		// cached object takes the update the controller is about to make
		// (the result's Cached version says so), which spares the
		// acknowledgement when the two agree.
		var cached uint64
		l.mu.Lock()
		if c := l.cache[v.Name]; c != nil && (c.State == api.StateStarting || c.State == api.StatePending) {
			c.State, c.Reason = api.StateRunning, api.ReasonStarted
			c.Version++
			cached = c.Version
		}
		l.mu.Unlock()
		res[i] = api.VMResult{Name: v.Name, OK: true, State: api.StateRunning, Cached: cached}
	})
	return api.LNMResults{Results: res}, nil
}

// OpOn implements api.Node. Destroying a guest that does not exist
// succeeds: it is gone, as asked.
func (l *LNM) OpOn(ctx context.Context, a api.LNMOpArgs) (api.LNMResults, error) {
	if _, err := api.ParseOp(string(a.Op)); err != nil {
		return api.LNMResults{}, api.Errorf(api.ErrBadRequest, "%v", err)
	}
	res := make([]api.VMResult, len(a.Names))
	l.parallel(len(a.Names), func(i int) {
		n := a.Names[i]
		err := l.drv.Op(ctx, n, a.Op, OpOptions{Force: a.Force})
		if err != nil && !(a.Op == api.OpDestroy && errors.Is(err, ErrNoGuest)) {
			res[i] = api.VMResult{Name: n, Error: fmt.Sprintf("%s: %v", a.Op, err)}
			return
		}
		if a.Op == api.OpDestroy {
			l.mu.Lock()
			delete(l.cache, n)
			l.mu.Unlock()
		}
		res[i] = api.VMResult{Name: n, OK: true, State: a.Op.Leaves()}
	})
	return api.LNMResults{Results: res}, nil
}

// PrepareMigration implements api.Node: this node readies to receive.
func (l *LNM) PrepareMigration(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	res := make([]api.VMResult, len(a.VMs))
	l.parallel(len(a.VMs), func(i int) {
		v := a.VMs[i]
		if v == nil {
			return
		}
		c := v.Clone()
		c.State = api.StateMigrating
		l.mu.Lock()
		l.cache[v.Name] = c
		l.mu.Unlock()
		if err := l.drv.PrepareIncoming(ctx, specOf(v)); err != nil {
			l.mu.Lock()
			delete(l.cache, v.Name)
			l.mu.Unlock()
			res[i] = api.VMResult{Name: v.Name, Error: err.Error()}
			return
		}
		res[i] = api.VMResult{Name: v.Name, OK: true}
	})
	return api.LNMResults{Results: res}, nil
}

// AbortMigration implements api.Node: prepared incoming migrations that
// did not happen are undone.
func (l *LNM) AbortMigration(ctx context.Context, a api.NamesArgs) (api.LNMResults, error) {
	res := make([]api.VMResult, len(a.Names))
	l.parallel(len(a.Names), func(i int) {
		n := a.Names[i]
		err := l.drv.AbortIncoming(ctx, n)
		l.mu.Lock()
		if c := l.cache[n]; c != nil && c.State == api.StateMigrating {
			delete(l.cache, n)
		}
		l.mu.Unlock()
		if err != nil {
			res[i] = api.VMResult{Name: n, Error: err.Error()}
			return
		}
		res[i] = api.VMResult{Name: n, OK: true}
	})
	return api.LNMResults{Results: res}, nil
}

// Migrate implements api.Node: guests leave for Target.
func (l *LNM) Migrate(ctx context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
	res := make([]api.VMResult, len(a.Names))
	l.parallel(len(a.Names), func(i int) {
		n := a.Names[i]
		// Mark the cached object so a scan mid-migration reports nothing.
		l.mu.Lock()
		prev := l.cache[n]
		if prev != nil {
			c := prev.Clone()
			c.State = api.StateMigrating
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
			res[i] = api.VMResult{Name: n, Error: err.Error()}
			return
		}
		st := api.StateRunning
		if prev != nil && prev.State == api.StatePaused {
			st = api.StatePaused
		}
		res[i] = api.VMResult{Name: n, OK: true, State: st}
	})
	return api.LNMResults{Results: res}, nil
}

// Scan asks the reporter for an immediate scan (tests, CLI).
func (l *LNM) Scan() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// CachedVMs returns copies of the cached VM objects (for tests and status).
func (l *LNM) CachedVMs() []*api.VM {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*api.VM, 0, len(l.cache))
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

// guests lists the node's guests (only names, when given) with the cached
// VM object of each. seen marks them as reported to the controller (a full
// listing at registration makes later scans report only changes).
func (l *LNM) guests(ctx context.Context, names []string, seen bool) ([]api.Guest, error) {
	doms, err := l.drv.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing guests: %w", err)
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
	out := make([]api.Guest, 0, len(doms))
	for _, d := range doms {
		if want != nil && !want[d.Name] {
			continue
		}
		cd := api.Guest{Name: d.Name, State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs}
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
