package core

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
)

// acker batches cached-object updates to one LNM: the controller's update of
// a cached VM object is the acknowledgement of a state change. A goroutine
// of the controller drains the batch while there is one, so acks never
// block the controller, and an idle LNM costs no goroutine (there may be
// ten thousand of them).
type acker struct {
	mu      sync.Mutex
	vms     map[string]*api.VM
	states  map[string]api.StateUpdate
	forget  map[string]bool
	running bool // a drain goroutine is running
	stopped bool
	link    api.Node
	c       *Controller
	lnm     string
}

func newAcker(c *Controller, lnm string, link api.Node) *acker {
	return &acker{vms: map[string]*api.VM{}, states: map[string]api.StateUpdate{}, forget: map[string]bool{}, link: link, c: c, lnm: lnm}
}

func (a *acker) add(vms []*api.VM, states []api.StateUpdate, forget []string) {
	if len(vms) == 0 && len(states) == 0 && len(forget) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, v := range vms {
		a.vms[v.Name] = v
		delete(a.states, v.Name)
		delete(a.forget, v.Name)
	}
	for _, u := range states {
		if full := a.vms[u.Name]; full != nil {
			full.State, full.Reason, full.Version = u.State, u.Reason, u.Version
			continue
		}
		a.states[u.Name] = u
		delete(a.forget, u.Name)
	}
	for _, n := range forget {
		a.forget[n] = true
		delete(a.vms, n)
		delete(a.states, n)
	}
	if !a.running && !a.stopped && !a.c.closed.Load() {
		a.running = true
		a.c.goTracked("acknowledgements to "+a.lnm, a.run)
	}
}

// take empties the batch; ok is false when there is nothing to send.
func (a *acker) take() (recv api.ReceiveArgs, forget []string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped || a.c.closed.Load() || (len(a.vms) == 0 && len(a.states) == 0 && len(a.forget) == 0) {
		a.running = false
		return recv, nil, false
	}
	recv.VMs = make([]*api.VM, 0, len(a.vms))
	for _, v := range a.vms {
		recv.VMs = append(recv.VMs, v)
	}
	for _, u := range a.states {
		recv.States = append(recv.States, u)
	}
	for n := range a.forget {
		forget = append(forget, n)
	}
	a.vms = map[string]*api.VM{}
	a.states = map[string]api.StateUpdate{}
	a.forget = map[string]bool{}
	return recv, forget, true
}

// run sends what is queued, one call at a time, until nothing is.
func (a *acker) run() {
	for {
		recv, forget, ok := a.take()
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stop := context.AfterFunc(ctxOf(a.c.stop), cancel)
		var err error
		if len(recv.VMs) > 0 || len(recv.States) > 0 {
			err = a.link.Receive(ctx, recv)
		}
		if err == nil && len(forget) > 0 {
			err = a.link.Forget(ctx, api.NamesArgs{Names: forget})
		}
		stop()
		cancel()
		if err != nil {
			// The LNM re-reports unacknowledged changes on its next scan.
			a.c.log.Debug("receive to LNM failed", "lnm", a.lnm, "err", err)
		}
	}
}

func (a *acker) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
}

// ctxOf is a context done when ch closes.
func ctxOf(ch <-chan struct{}) context.Context { return chanCtx(ch) }

type chanCtx <-chan struct{}

func (c chanCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c chanCtx) Done() <-chan struct{}       { return c }
func (c chanCtx) Value(any) any               { return nil }
func (c chanCtx) Err() error {
	select {
	case <-c:
		return context.Canceled
	default:
		return nil
	}
}

// ack sends whole objects to an LNM's cache.
func (c *Controller) ack(lnm string, vms []*api.VM) { c.ackAll(lnm, vms, nil, nil) }

// forgetOn makes an LNM drop cached objects.
func (c *Controller) forgetOn(lnm string, names []string) { c.ackAll(lnm, nil, nil, names) }

// ackStates acknowledges state changes of objects the LNM already holds.
func (c *Controller) ackStates(lnm string, vms []*api.VM) {
	if len(vms) == 0 {
		return
	}
	us := make([]api.StateUpdate, len(vms))
	for i, v := range vms {
		us[i] = stateOf(v)
	}
	c.ackAll(lnm, nil, us, nil)
}

func (c *Controller) ackAll(lnm string, vms []*api.VM, states []api.StateUpdate, forget []string) {
	if len(vms) == 0 && len(states) == 0 && len(forget) == 0 {
		return
	}
	var a *acker
	c.st.read(func() {
		if l := c.st.lnms[lnm]; l != nil {
			a = l.acks
		}
	})
	if a != nil {
		a.add(vms, states, forget)
	}
}

// AttachLNM records a connected LNM and rebuilds its part of the global
// state from what it reports: its description and status (so placement
// knows its capacity from the first moment) and each guest on the node
// with the cached VM object it holds. A node is believed about its own
// VMs: those the controller placed there, and, while it registers after a
// controller restart, the managed VMs it reports (see AdoptMode); others
// go on the unmanaged list, and a VM another connected node holds is a
// conflict (kept where it is). VMs the controller expected there but the
// node lacks become missing. It returns a generation number that
// DetachLNM must quote, so a stale session cannot detach a newer one.
func (c *Controller) AttachLNM(ctx context.Context, hello api.Hello, link api.Node, guests []api.Guest) (gen uint64, err error) {
	if err := c.begin(); err != nil {
		return 0, err
	}
	defer c.recoverTo(&err, "LNM registration")
	if err := hello.Validate(); err != nil {
		return 0, err
	}
	info := hello.Node
	gen = c.gen.Add(1)
	// The connection event first, then one per VM adopted or changed.
	evs := make([]api.Event, 1, 1+len(guests))
	var acks []*api.VM
	states := make([]api.StateUpdate, 0, len(guests))
	// sync tells the LNM the controller's object for a VM: only the state
	// part when the LNM's cached object already carries the rest (the
	// usual case, and after a controller restart every VM of the site).
	sync := func(vm *api.VM, cached *api.VM) {
		if cached != nil && sameBody(vm, cached) {
			states = append(states, stateOf(vm))
			return
		}
		acks = append(acks, vm.Snapshot())
	}
	// Malformed reports are set aside before the state lock is taken: a
	// whole site registers at once after a restart, and the lock is shared.
	bad := make([]bool, len(guests))
	for i := range guests {
		g := &guests[i]
		if err := g.Validate(); err != nil {
			c.log.Warn("LNM reported a malformed guest; ignored", "lnm", info.Name, "err", err)
			bad[i] = true
			continue
		}
		if g.Cached != nil {
			if err := api.ValidCached(g.Cached); err != nil || g.Cached.Name != g.Name {
				c.log.Warn("LNM sent back a malformed cached object; ignored", "lnm", info.Name, "vm", g.Name, "err", err)
				g.Cached = nil
			}
		}
	}
	adoptEvents := true
	fenced := false
	var stale []string
	quiet := false
	var st api.LNM
	c.st.write(func() {
		l := c.st.lnmLocked(info.Name)
		if l.acks != nil {
			l.acks.close()
		}
		recovering := (l.known && !l.attached) || time.Now().Before(c.adoptUntil)
		adopt := c.cfg.Adopt == AdoptAlways || (c.cfg.Adopt == AdoptRecovery && recovering)
		c.log.Debug("LNM registering", "lnm", info.Name, "adopts", adopt, "known", l.known, "first", !l.attached, "window_left", time.Until(c.adoptUntil))
		l.attached = true
		l.attaching = true
		fenced = l.lnm.Fenced
		// Free capacity is the node's size less what its VMs take
		// (syncSlotLocked): the size may have changed.
		l.lnm.Info = info
		l.lnm.Status.Usage, l.lnm.Status.ReportedAt = hello.Status.Usage, hello.Status.ReportedAt
		// While a restarted controller is rebuilding its state, adoptions go
		// to plugins only: clients reload once when it is whole (EvRecovered)
		// instead of taking a site's worth of events one VM at a time. Decided
		// under the lock that inserts them, counting this LNM if it is one of
		// those awaited: either the gate opens after this (and the clients'
		// reload lists them) or it already has (and they are published).
		quiet = c.st.lnmsIn[api.LNMRecovering] > 0
		// Quiet adoptions are for plugins alone: none built if none listens.
		adoptEvents = !quiet || c.pluginsWant(api.EvStateChanged)
		l.lnm.State = api.LNMConnected
		l.lnm.Since = now()
		c.st.syncSlotLocked(l)
		l.link = link
		l.gen = gen
		l.acks = newAcker(c, info.Name, link)
		oldUnmanaged := c.st.clearUnmanagedLocked(l)
		c.st.clearConflictsLocked(l)
		if len(l.vms) == 0 && len(guests) > 8 {
			l.vms = make(map[string]*api.VM, len(guests)) // after a restart: sized once, not grown
		}
		seen := make(map[string]bool, len(guests))
		for i := range guests {
			g := &guests[i]
			if bad[i] || seen[g.Name] {
				continue
			}
			seen[g.Name] = true
			short, owner, managed := api.ParseFullName(g.Name, c.cfg.Domain)
			vm := c.st.vms[g.Name]
			switch {
			case vm != nil && vm.LNM != info.Name && (fenced || l.stale[g.Name]):
				// Restarted elsewhere after a fence, or migrated away
				// while this node could not say it let go: stale.
				stale = append(stale, g.Name)
			case vm != nil && vm.LNM != info.Name && c.heldElsewhereLocked(vm):
				if c.st.setConflictLocked(l, *g, false, vm.LNM) {
					evs = append(evs, c.conflictEvent(vm, info.Name))
				}
			case vm != nil:
				c.st.moveLocked(vm, info.Name)
				if c.st.setStateLocked(vm, g.State, g.Reason) {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name})
				}
				sync(vm, g.Cached)
			case managed && adopt:
				vm = &api.VM{Name: g.Name, Short: short, Owner: owner, Cluster: api.ClusterOf(short), LNM: info.Name,
					State: g.State, Reason: g.Reason, MemMB: g.MemMB, VCPUs: g.VCPUs, Version: 1, Created: now()}
				if cv := g.Cached; cv != nil && cv.Owner == owner {
					// Recovery: the LNM's cached object carries what the name cannot.
					if cv.Cluster != "" {
						vm.Cluster = cv.Cluster
					}
					vm.Data = maps.Clone(cv.Data)
					vm.Request = cv.Request
					if !cv.Created.IsZero() {
						vm.Created = cv.Created
					}
					if cv.Version > 0 && cv.Version < 1<<62 {
						vm.Version = cv.Version + 1
					}
				}
				c.st.insertLocked(vm)
				sync(vm, g.Cached)
				if adoptEvents {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name, Detail: c.adopted, PluginsOnly: quiet})
				}
			default:
				added := c.st.setUnmanagedLocked(l, *g)
				if u := l.unmanaged[g.Name]; u != nil {
					if prev := oldUnmanaged[g.Name]; prev != nil {
						u.Created = prev.Created
					} else if added {
						if managed {
							u.Reason = "a managed name the controller has no record of (adoption: " + string(c.cfg.Adopt) + ")"
						}
						evs = append(evs, api.Event{Type: api.EvVMUnmanaged, VM: u.Snapshot(), LNM: info.Name})
					}
				}
			}
		}
		for name, vm := range l.vms {
			if seen[name] || vm.State == api.StateMigrating {
				continue
			}
			if c.st.setStateLocked(vm, api.StateMissing, "not found on "+info.Name+" when it reconnected") {
				evs = append(evs, api.Event{Type: api.EvVMMissing, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name})
			}
		}
		l.stale = nil
		if fenced {
			l.lnm.Fenced = false
			l.lnm.Notice = fmt.Sprintf("registered again after being fenced: %d stale guests destroyed", len(stale))
			evs = append(evs, modeEvent(l, l.lnm.Mode, ""))
		}
		l.attaching = false
		c.st.drainedLocked(l)
		st = l.lnm
	})
	c.destroyStale(info.Name, link, stale)
	evs[0] = api.Event{Type: api.EvLNMConnected, LNM: info.Name, Detail: api.StringMap{"address": st.Info.Address}}
	// A full sync: the LNM's cache becomes exactly these objects.
	c.goTracked("sync of "+info.Name, func() {
		rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		defer context.AfterFunc(ctxOf(c.stop), cancel)()
		if err := link.Sync(rctx, api.ReceiveArgs{VMs: acks, States: states}); err != nil {
			c.log.Warn("initial sync of an LNM's cache failed", "lnm", info.Name, "err", err)
		}
	})
	c.emit(evs...)
	c.openGateIfWhole()
	c.log.Info("LNM connected", "lnm", info.Name, "guests", len(guests))
	return gen, nil
}

// destroyStale destroys a node's stale copies of VMs that run elsewhere
// (see lnmRec.stale), in the background.
func (c *Controller) destroyStale(node string, link api.Node, names []string) {
	if len(names) == 0 || link == nil {
		return
	}
	c.log.Warn("a node holds stale copies of VMs that run elsewhere: destroying them", "lnm", node, "guests", len(names))
	c.goTracked("destroy stale guests on "+node, func() {
		rctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
		defer cancel()
		defer context.AfterFunc(ctxOf(c.stop), cancel)()
		out, err := link.OpOn(rctx, api.LNMOpArgs{Op: api.OpDestroy, Names: names, Force: true})
		if err != nil {
			c.log.Error("destroying stale guests failed", "lnm", node, "err", err)
			return
		}
		for _, r := range out.Results {
			if !r.OK {
				c.log.Error("a stale guest was not destroyed", "lnm", node, "vm", r.Name, "err", r.Error)
			}
		}
	})
}

// heldElsewhereLocked reports whether vm's own node still holds it: it is
// connected and the VM is not on its way to another node. Another node's
// report of it is then a conflict, not a move.
func (c *Controller) heldElsewhereLocked(vm *api.VM) bool {
	l := c.st.lnms[vm.LNM]
	return l != nil && l.lnm.State == api.LNMConnected && vm.State != api.StateMigrating && vm.State != api.StateLost && vm.State != api.StateMissing
}

func (c *Controller) conflictEvent(vm *api.VM, reporter string) api.Event {
	c.log.Warn("a node reported a VM another connected node holds; kept where it is", "vm", vm.Name, "holder", vm.LNM, "reporter", reporter)
	return api.Event{Type: api.EvVMConflict, VM: vm.Snapshot(), LNM: reporter,
		Detail: api.StringMap{"holder": vm.LNM, "reporter": reporter}}
}

// stateOf is the state part of v, as an LNM's cached object takes it.
func stateOf(v *api.VM) api.StateUpdate {
	return api.StateUpdate{Name: v.Name, State: v.State, Reason: v.Reason, Version: v.Version}
}

// sameBody reports whether two objects of one VM agree in everything but
// the state part (state, reason, version) and usage.
func sameBody(a, b *api.VM) bool {
	return a.Name == b.Name && a.Short == b.Short && a.Owner == b.Owner && a.Cluster == b.Cluster && a.LNM == b.LNM &&
		a.MemMB == b.MemMB && a.VCPUs == b.VCPUs && a.Request == b.Request && a.Unmanage == b.Unmanage &&
		a.Created.Equal(b.Created) && maps.Equal(a.Data, b.Data)
}

// DetachLNM marks an LNM disconnected and every VM on it lost; nothing else
// is assumed about those VMs. A VM of it that another connected node
// reported (a conflict) now belongs to that node.
func (c *Controller) DetachLNM(name string, gen uint64, reason string) {
	var evs []api.Event
	found := false
	c.st.write(func() {
		l := c.st.lnms[name]
		if l == nil || l.gen != gen {
			return
		}
		found = true
		if l.acks != nil {
			l.acks.close()
			l.acks = nil
		}
		l.link = nil
		l.lnm.State = api.LNMDisconnected
		l.lnm.Since = now()
		c.st.syncSlotLocked(l)
		c.st.clearConflictsLocked(l)
		for _, vm := range l.vms {
			if vm.State == api.StateLost {
				continue
			}
			if other := c.claimantLocked(vm); other != nil {
				g := other.conflicts[vm.Name]
				c.st.setConflictLocked(other, api.Guest{Name: vm.Name}, true, "")
				c.st.moveLocked(vm, other.lnm.Info.Name)
				c.st.setStateLocked(vm, g.State, "its node "+name+" failed; "+other.lnm.Info.Name+" runs it")
				evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: vm.LNM})
				continue
			}
			c.st.setStateLocked(vm, api.StateLost, "LNM "+name+" failed: "+reason)
			evs = append(evs, api.Event{Type: api.EvVMLost, VM: vm.Snapshot(), User: vm.Owner, LNM: name})
		}
	})
	if !found {
		return
	}
	c.log.Warn("LNM disconnected; its VMs are lost", "lnm", name, "vms", len(evs), "reason", reason)
	c.emit(append([]api.Event{{Type: api.EvLNMDisconnected, LNM: name, Error: reason}}, evs...)...)
}

// claimantLocked returns a connected node that reported vm as a conflict.
func (c *Controller) claimantLocked(vm *api.VM) *lnmRec {
	if c.st.conflicts == 0 {
		return nil
	}
	for _, l := range c.st.lnms {
		if l.lnm.State == api.LNMConnected && l.conflicts[vm.Name] != nil {
			return l
		}
	}
	return nil
}

// HandleReport applies one frame of an LNM's report stream: state changes of
// its guests (acknowledged by updating the LNM's cached objects) and usage.
// A node is believed only about its own VMs (see AttachLNM).
func (c *Controller) HandleReport(lnm string, gen uint64, r api.Report) {
	if c.closed.Load() {
		return
	}
	defer c.logPanic("LNM report from " + lnm)
	var evs []api.Event
	var acks []*api.VM
	var stale []string
	var link api.Node
	c.st.write(func() {
		l := c.st.lnms[lnm]
		if l == nil || l.gen != gen {
			return
		}
		link = l.link
		if r.Node != nil {
			l.lnm.Status.Usage, l.lnm.Status.ReportedAt = r.Node.Usage, r.Node.ReportedAt
			c.st.syncSlotLocked(l)
		}
		for name, u := range r.Usage {
			vm := l.vms[name]
			if vm == nil {
				vm = l.unmanaged[name]
			}
			if vm == nil {
				continue
			}
			if vm.Usage == nil {
				vm.Usage = new(api.Usage) // reused by every later report
			}
			*vm.Usage = u
		}
		for i := range r.Changes {
			g := r.Changes[i]
			if err := g.Validate(); err != nil {
				c.log.Warn("LNM reported a malformed guest; ignored", "lnm", lnm, "err", err)
				continue
			}
			gone := g.State == api.StateMissing || g.State == api.StateDestroyed
			vm := c.st.vms[g.Name]
			short, owner, managed := api.ParseFullName(g.Name, c.cfg.Domain)
			switch {
			case vm != nil && vm.LNM != lnm:
				if gone {
					c.st.setConflictLocked(l, g, true, "")
					continue // a stale copy on a node the VM left
				}
				if vm.State == api.StateMigrating {
					continue // the destination reports before the migration is recorded
				}
				if l.stale[g.Name] {
					delete(l.stale, g.Name)
					stale = append(stale, g.Name)
					continue
				}
				if c.heldElsewhereLocked(vm) {
					if c.st.setConflictLocked(l, g, false, vm.LNM) {
						evs = append(evs, c.conflictEvent(vm, lnm))
					}
					continue
				}
				// Its node is gone: the reporter runs it now.
				c.st.setConflictLocked(l, g, true, "")
				c.st.moveLocked(vm, lnm)
				if c.st.setStateLocked(vm, g.State, g.Reason) {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
				}
				acks = append(acks, vm.Snapshot())
			case vm != nil:
				if vm.State == api.StateMigrating && g.State != api.StateMissing {
					continue
				}
				if gone {
					if vm.State == api.StateStarting || vm.State == api.StatePending {
						continue // not booted yet
					}
					if c.st.setStateLocked(vm, api.StateMissing, g.Reason) {
						evs = append(evs, api.Event{Type: api.EvVMMissing, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
					}
					acks = append(acks, vm.Snapshot())
					continue
				}
				if c.st.setStateLocked(vm, g.State, g.Reason) {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
				}
				acks = append(acks, vm.Snapshot())
			case gone:
				c.st.setUnmanagedLocked(l, api.Guest{Name: g.Name})
				c.st.setConflictLocked(l, g, true, "")
			case managed && c.cfg.Adopt == AdoptAlways:
				vm = &api.VM{Name: g.Name, Short: short, Owner: owner, Cluster: api.ClusterOf(short), LNM: lnm, State: g.State,
					Reason: g.Reason, MemMB: g.MemMB, VCPUs: g.VCPUs, Version: 1, Created: now()}
				c.st.insertLocked(vm)
				acks = append(acks, vm.Snapshot())
				evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: owner, LNM: lnm, Detail: c.adopted})
			default:
				if c.st.setUnmanagedLocked(l, g) {
					u := l.unmanaged[g.Name]
					if managed {
						u.Reason = "a managed name the controller has no record of (adoption: " + string(c.cfg.Adopt) + ")"
					}
					evs = append(evs, api.Event{Type: api.EvVMUnmanaged, VM: u.Snapshot(), LNM: lnm})
				}
			}
		}
	})
	c.ack(lnm, acks)
	c.emit(evs...)
	c.destroyStale(lnm, link, stale)
}

// ---------------------------------------------------------------------------
// Idempotent requests: a retried request with the same id gets the first
// attempt's result instead of running again.

type future struct {
	done chan struct{}
	res  *api.Result
	err  error
	at   time.Time
}

func (f *future) finish(r *api.Result, err error) {
	f.res, f.err = r, err
	close(f.done)
}

func (f *future) wait(ctx context.Context) (*api.Result, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return nil, api.Errorf(api.ErrUnavailable, "waiting for the first attempt of this request: %v", ctx.Err())
	}
}

type idemCache struct {
	mu    sync.Mutex
	m     map[string]*future
	order []string
	max   int
	ttl   time.Duration
}

func newIdemCache(max int, ttl time.Duration) *idemCache {
	return &idemCache{m: map[string]*future{}, max: max, ttl: ttl}
}

func (c *idemCache) begin(key string) (*future, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.m[key]; ok && time.Since(f.at) < c.ttl {
		return f, false
	}
	f := &future{done: make(chan struct{}), at: time.Now()}
	c.m[key] = f
	c.order = append(c.order, key)
	for len(c.order) > c.max {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	return f, true
}

// ExpectLNMs records LNMs known from before a controller restart as
// recovering: they are listed, and they get a grace period to reconnect
// before any is declared failed (see EndGrace), so a restart never marks the
// whole site failed at once.
func (c *Controller) ExpectLNMs(infos []api.NodeInfo) {
	c.recMu.Lock()
	if c.recovered == nil && len(infos) > 0 {
		c.recovered = make(chan struct{})
	}
	c.recMu.Unlock()
	defer c.openGateIfWhole()
	c.st.write(func() {
		for _, info := range infos {
			if api.ValidLabel(info.Name) != nil {
				continue
			}
			if _, ok := c.st.lnms[info.Name]; ok {
				continue
			}
			l := c.st.lnmLocked(info.Name)
			l.lnm.Info, l.lnm.State, l.lnm.Since = info, api.LNMRecovering, now()
			l.known = true
			c.st.syncSlotLocked(l)
		}
	})
}

// EndGrace declares every LNM still recovering failed.
func (c *Controller) EndGrace() []string {
	var failed []string
	c.st.write(func() {
		for name, l := range c.st.lnms {
			if l.lnm.State == api.LNMRecovering {
				l.lnm.State = api.LNMDisconnected
				l.lnm.Since = now()
				c.st.syncSlotLocked(l)
				failed = append(failed, name)
			}
		}
	})
	c.openGateIfWhole()
	var evs []api.Event
	for _, n := range failed {
		evs = append(evs, api.Event{Type: api.EvLNMDisconnected, LNM: n, Error: "did not reconnect within the grace period after a controller restart"})
	}
	c.emit(evs...)
	return failed
}
