package core

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// acker batches cached-object updates to one LNM: the controller's update of
// a cached VM object is the acknowledgement of a state change. A goroutine
// drains the batch while there is one, so acks never block the controller,
// and an idle LNM costs no goroutine (there may be ten thousand of them).
type acker struct {
	mu      sync.Mutex
	vms     map[string]*VM
	states  map[string]StateUpdate
	forget  map[string]bool
	running bool // a drain goroutine is running
	stopped bool
	link    LNMLink
	c       *Controller
	lnm     string
}

func newAcker(c *Controller, lnm string, link LNMLink) *acker {
	return &acker{vms: map[string]*VM{}, states: map[string]StateUpdate{}, forget: map[string]bool{}, link: link, c: c, lnm: lnm}
}

func (a *acker) add(vms []*VM, states []StateUpdate, forget []string) {
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
	if !a.running && !a.stopped {
		a.running = true
		go a.run()
	}
}

// run sends what is queued, one receive call at a time, until nothing is.
func (a *acker) run() {
	for {
		a.mu.Lock()
		if a.stopped || (len(a.vms) == 0 && len(a.states) == 0 && len(a.forget) == 0) {
			a.running = false
			a.mu.Unlock()
			return
		}
		args := ReceiveArgs{VMs: make([]*VM, 0, len(a.vms))}
		for _, v := range a.vms {
			args.VMs = append(args.VMs, v)
		}
		for _, u := range a.states {
			args.States = append(args.States, u)
		}
		for n := range a.forget {
			args.Forget = append(args.Forget, n)
		}
		a.vms = map[string]*VM{}
		a.states = map[string]StateUpdate{}
		a.forget = map[string]bool{}
		a.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := a.link.Receive(ctx, args)
		cancel()
		if err != nil {
			// The LNM re-reports unacknowledged changes on its next scan.
			a.c.log.Debug("receive to LNM failed", "lnm", a.lnm, "err", err)
		}
	}
}

func (a *acker) close() {
	a.mu.Lock()
	a.stopped = true
	a.mu.Unlock()
}

func (c *Controller) ack(lnm string, vms []*VM, forget []string) {
	c.ackAll(lnm, vms, nil, forget)
}

// ackStates acknowledges state changes of objects the LNM already holds.
func (c *Controller) ackStates(lnm string, vms []*VM) {
	if len(vms) == 0 {
		return
	}
	us := make([]StateUpdate, len(vms))
	for i, v := range vms {
		us[i] = stateOf(v)
	}
	c.ackAll(lnm, nil, us, nil)
}

func (c *Controller) ackAll(lnm string, vms []*VM, states []StateUpdate, forget []string) {
	if len(vms) == 0 && len(states) == 0 && len(forget) == 0 {
		return
	}
	c.st.mu.RLock()
	l := c.st.lnms[lnm]
	var a *acker
	if l != nil {
		a = l.acks
	}
	c.st.mu.RUnlock()
	if a != nil {
		a.add(vms, states, forget)
	}
}

// AttachLNM records a connected LNM and rebuilds its part of the global
// state from what it reports (its status, so placement knows its free
// capacity from the first moment, and each domain on the node with the cached VM
// object it holds. Managed VMs (names ending in the Usher domain) are
// adopted, others go on the unmanaged list, VMs the controller expected
// there but the node lacks become missing. It returns a generation number
// that DetachLNM must quote, so a stale session cannot detach a newer one.
func (c *Controller) AttachLNM(ctx context.Context, info NodeInfo, status *NodeStatus, link LNMLink, domains []Domain) (uint64, error) {
	if err := ValidLabel(info.Name); err != nil {
		return 0, fmt.Errorf("%w: LNM name: %v", ErrBadRequest, err)
	}
	gen := c.gen.Add(1)
	// The connection event first, then one per VM adopted or changed.
	evs := make([]Event, 1, 1+len(domains))
	var acks []*VM
	states := make([]StateUpdate, 0, len(domains))
	// sync tells the LNM the controller's object for a VM: only the state
	// part when the LNM's cached object already carries the rest (the
	// usual case, and after a controller restart every VM of the site).
	sync := func(vm *VM, cached *VM) {
		if cached != nil && sameBody(vm, cached) {
			states = append(states, stateOf(vm))
			return
		}
		acks = append(acks, vm.Snapshot())
	}
	c.st.mu.Lock()
	l := c.st.lnms[info.Name]
	if l == nil {
		l = &lnmRec{vms: map[string]*VM{}}
		c.st.lnms[info.Name] = l
	}
	if l.acks != nil {
		l.acks.close()
	}
	l.lnm.Info = info
	if status != nil {
		l.lnm.Status = *status
	}
	// While a restarted controller is rebuilding its state, adoptions go
	// to plugins only: clients reload once when it is whole (EvRecovered)
	// instead of taking a site's worth of events one VM at a time. Decided
	// under the lock that inserts them, counting this LNM if it is one of
	// those awaited: either the gate opens after this (and the clients'
	// reload lists them) or it already has (and they are published).
	quiet := c.st.lnmsIn[LNMRecovering] > 0
	// Quiet adoptions are for plugins alone: none built if none listens.
	adoptEvents := !quiet || c.pluginsWant(EvStateChanged)
	l.lnm.State = LNMConnected
	l.lnm.Since = now()
	c.st.syncSlotLocked(l)
	l.link = link
	l.gen = gen
	l.acks = newAcker(c, info.Name, link)
	oldUnmanaged := l.unmanaged
	l.unmanaged = map[string]*VM{}
	c.st.unmanaged -= len(oldUnmanaged)
	if len(l.vms) == 0 && len(domains) > 8 {
		l.vms = make(map[string]*VM, len(domains)) // after a restart: sized once, not grown
	}
	seen := make(map[string]bool, len(domains))
	for _, d := range domains {
		seen[d.Name] = true
		short, owner, managed := ParseFullName(d.Name, c.cfg.Domain)
		vm := c.st.vms[d.Name]
		switch {
		case vm != nil:
			if vm.LNM != info.Name {
				c.st.moveLocked(vm, info.Name)
			}
			if c.st.setStateLocked(vm, d.State, d.Reason) {
				evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name})
			}
			sync(vm, d.Cached)
		case managed:
			vm = &VM{Name: d.Name, Short: short, Owner: owner, Cluster: ClusterOf(short), LNM: info.Name,
				State: d.State, Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs, Version: 1, Created: now()}
			if cv := d.Cached; cv != nil && cv.Name == d.Name && cv.Owner == owner {
				// Recovery: the LNM's cached object carries what the name cannot.
				if ValidLabel(cv.Cluster) == nil {
					vm.Cluster = cv.Cluster
				}
				vm.Data = cloneMap(cv.Data)
				vm.Request = cv.Request
				if !cv.Created.IsZero() {
					vm.Created = cv.Created
				}
				if cv.Version > 0 {
					vm.Version = cv.Version + 1
				}
			}
			c.st.insertLocked(vm)
			sync(vm, d.Cached)
			if adoptEvents {
				evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name, Detail: c.adopted, PluginsOnly: quiet})
			}
		default:
			u := &VM{Name: d.Name, LNM: info.Name, State: d.State, MemMB: d.MemMB, VCPUs: d.VCPUs, Unmanage: true, Created: now()}
			if prev := oldUnmanaged[d.Name]; prev != nil {
				u.Created = prev.Created
			}
			l.unmanaged[d.Name] = u
			if oldUnmanaged[d.Name] == nil {
				evs = append(evs, Event{Type: EvVMUnmanaged, VM: u.Snapshot(), LNM: info.Name})
			}
		}
	}
	for name, vm := range l.vms {
		if seen[name] {
			continue
		}
		if vm.State == StateMigrating {
			continue
		}
		if c.st.setStateLocked(vm, StateMissing, "not found on "+info.Name+" when it reconnected") {
			evs = append(evs, Event{Type: EvVMMissing, VM: vm.Snapshot(), User: vm.Owner, LNM: info.Name})
		}
	}
	c.st.unmanaged += len(l.unmanaged)
	st := l.lnm
	c.st.mu.Unlock()
	evs[0] = Event{Type: EvLNMConnected, LNM: info.Name, Detail: StringMap{"address": st.Info.Address}}
	// A full sync: the LNM's cache becomes exactly these objects.
	go func() {
		rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := link.Receive(rctx, ReceiveArgs{VMs: acks, States: states, Sync: true}); err != nil {
			c.log.Warn("initial receive to LNM failed", "lnm", info.Name, "err", err)
		}
	}()
	c.emit(evs...)
	c.openGateIfWhole()
	c.log.Info("LNM connected", "lnm", info.Name, "domains", len(domains))
	return gen, nil
}

// stateOf is the state part of v, as an LNM's cached object takes it.
func stateOf(v *VM) StateUpdate {
	return StateUpdate{Name: v.Name, State: v.State, Reason: v.Reason, Version: v.Version}
}

// sameBody reports whether two objects of one VM agree in everything but
// the state part (state, reason, version) and usage.
func sameBody(a, b *VM) bool {
	if a.Name != b.Name || a.Short != b.Short || a.Owner != b.Owner || a.Cluster != b.Cluster || a.LNM != b.LNM ||
		a.MemMB != b.MemMB || a.VCPUs != b.VCPUs || a.Request != b.Request || a.Unmanage != b.Unmanage ||
		!a.Created.Equal(b.Created) || len(a.Data) != len(b.Data) {
		return false
	}
	for k, v := range a.Data {
		if bv, ok := b.Data[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// DetachLNM marks an LNM disconnected and every VM on it lost; nothing else
// is assumed about those VMs.
func (c *Controller) DetachLNM(name string, gen uint64, reason string) {
	var evs []Event
	c.st.mu.Lock()
	l := c.st.lnms[name]
	if l == nil || l.gen != gen {
		c.st.mu.Unlock()
		return
	}
	if l.acks != nil {
		l.acks.close()
		l.acks = nil
	}
	l.link = nil
	l.lnm.State = LNMDisconnected
	l.lnm.Since = now()
	c.st.syncSlotLocked(l)
	for _, vm := range l.vms {
		if vm.State == StateLost {
			continue
		}
		c.st.setStateLocked(vm, StateLost, "LNM "+name+" failed: "+reason)
		evs = append(evs, Event{Type: EvVMLost, VM: vm.Snapshot(), User: vm.Owner, LNM: name})
	}
	c.st.mu.Unlock()
	c.log.Warn("LNM disconnected; its VMs are lost", "lnm", name, "vms", len(evs), "reason", reason)
	c.emit(append([]Event{{Type: EvLNMLost, LNM: name, Error: reason}}, evs...)...)
}

// HandleReport applies one frame of an LNM's event stream: state changes of
// its domains (acknowledged by updating the LNM's cached objects) and usage.
func (c *Controller) HandleReport(lnm string, gen uint64, r LNMReport) {
	var evs []Event
	var acks []*VM
	c.st.mu.Lock()
	l := c.st.lnms[lnm]
	if l == nil || l.gen != gen {
		c.st.mu.Unlock()
		return
	}
	if r.Node != nil {
		l.lnm.Status = *r.Node
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
			vm.Usage = new(Usage) // reused by every later report
		}
		*vm.Usage = u
	}
	for _, d := range r.Changes {
		vm := c.st.vms[d.Name]
		short, owner, managed := ParseFullName(d.Name, c.cfg.Domain)
		switch {
		case vm != nil && vm.LNM != lnm:
			if vm.State == StateMigrating {
				continue // the destination reports before the migration is recorded
			}
			if d.State == StateMissing || d.State == StateDestroyed {
				continue // a stale copy on a node the VM left
			}
			c.st.moveLocked(vm, lnm)
			if c.st.setStateLocked(vm, d.State, d.Reason) {
				evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
			}
			acks = append(acks, vm.Snapshot())
		case vm != nil:
			if vm.State == StateMigrating && d.State != StateMissing {
				continue
			}
			if d.State == StateMissing || d.State == StateDestroyed {
				if vm.State == StateStarting || vm.State == StatePending {
					continue // not booted yet
				}
				if c.st.setStateLocked(vm, StateMissing, d.Reason) {
					evs = append(evs, Event{Type: EvVMMissing, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
				}
				acks = append(acks, vm.Snapshot())
				continue
			}
			if c.st.setStateLocked(vm, d.State, d.Reason) {
				evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
			}
			acks = append(acks, vm.Snapshot())
		case d.State == StateMissing || d.State == StateDestroyed:
			if _, ok := l.unmanaged[d.Name]; ok {
				delete(l.unmanaged, d.Name)
				c.st.unmanaged--
			}
		case managed:
			vm = &VM{Name: d.Name, Short: short, Owner: owner, Cluster: ClusterOf(short), LNM: lnm, State: d.State,
				Reason: d.Reason, MemMB: d.MemMB, VCPUs: d.VCPUs, Version: 1, Created: now()}
			c.st.insertLocked(vm)
			acks = append(acks, vm.Snapshot())
			evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: owner, LNM: lnm, Detail: c.adopted})
		default:
			u := l.unmanaged[d.Name]
			if u == nil {
				u = &VM{Name: d.Name, LNM: lnm, Unmanage: true, Created: now()}
				l.unmanaged[d.Name] = u
				c.st.unmanaged++
				u.State, u.MemMB, u.VCPUs = d.State, d.MemMB, d.VCPUs
				evs = append(evs, Event{Type: EvVMUnmanaged, VM: u.Snapshot(), LNM: lnm})
			} else {
				u.State = d.State
			}
		}
	}
	c.st.mu.Unlock()
	c.ack(lnm, acks, nil)
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// Idempotent requests: a retried request with the same id gets the first
// attempt's result instead of running again.

type future struct {
	done chan struct{}
	res  *Result
	err  error
	at   time.Time
}

func (f *future) finish(r *Result, err error) {
	f.res, f.err = r, err
	close(f.done)
}

func (f *future) wait(ctx context.Context) (*Result, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for the first attempt of this request: %v", ErrUnavailable, ctx.Err())
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
func (c *Controller) ExpectLNMs(infos []NodeInfo) {
	c.recMu.Lock()
	if c.recovered == nil && len(infos) > 0 {
		c.recovered = make(chan struct{})
	}
	c.recMu.Unlock()
	defer c.openGateIfWhole()
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	for _, info := range infos {
		if ValidLabel(info.Name) != nil {
			continue
		}
		if _, ok := c.st.lnms[info.Name]; ok {
			continue
		}
		l := &lnmRec{vms: map[string]*VM{}, unmanaged: map[string]*VM{},
			lnm: LNM{Info: info, State: LNMRecovering, Since: now()}}
		c.st.lnms[info.Name] = l
		c.st.syncSlotLocked(l)
	}
}

// EndGrace declares every LNM still recovering failed.
func (c *Controller) EndGrace() []string {
	var failed []string
	c.st.mu.Lock()
	for name, l := range c.st.lnms {
		if l.lnm.State == LNMRecovering {
			l.lnm.State = LNMDisconnected
			l.lnm.Since = now()
			c.st.syncSlotLocked(l)
			failed = append(failed, name)
		}
	}
	c.st.mu.Unlock()
	c.openGateIfWhole()
	var evs []Event
	for _, n := range failed {
		evs = append(evs, Event{Type: EvLNMLost, LNM: n, Error: "did not reconnect within the grace period after a controller restart"})
	}
	c.emit(evs...)
	return failed
}
