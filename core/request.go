package core

import (
	"context"
	"fmt"
	"maps"
	"runtime/debug"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
)

// This file is the request pipeline: a request is validated, resolved into
// a Request, passed through the policy chain, which yields a Decision, and
// the Decision is executed as one batch per LNM.

// resolve turns VM names into request VMs; unknown or invisible ones come
// back as drops.
func (c *Controller) resolve(id api.Identity, names []string, req *Request) []api.Drop {
	seen := make(map[string]bool, len(names))
	var dropped []api.Drop
	req.VMs = make([]ReqVM, 0, len(names))
	c.st.read(func() {
		for _, n := range names {
			if seen[n] {
				continue
			}
			seen[n] = true
			v := c.st.vms[n]
			if v == nil || !c.visible(id, v) {
				dropped = append(dropped, api.Drop{VM: n, Reason: "no such VM", By: "controller"})
				continue
			}
			req.VMs = append(req.VMs, ReqVM{Name: v.Name, Short: v.Short, Owner: v.Owner, Cluster: v.Cluster,
				LNM: v.LNM, MemMB: v.MemMB, VCPUs: v.VCPUs, State: v.State, Data: maps.Clone(v.Data)})
		}
	})
	return dropped
}

// runChain runs authorize then the request event; the decision d starts
// as the request and ends as the chain left it.
func (c *Controller) runChain(ctx context.Context, event string, req *Request, d *Decision) error {
	if err := c.hooks.Authorize(ctx, req, d); err != nil {
		return err
	}
	return c.hooks.Request(ctx, event, req, d)
}

// runBatches runs n LNM batches concurrently (one goroutine per batch, not
// per VM) and waits for them or for ctx. The batches outlive the request if
// its deadline passes: they finish and update the state on their own (the
// controller owns and waits for them). It reports whether all finished.
func (c *Controller) runBatches(ctx context.Context, n int, run func(i int)) bool {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		c.goTracked("LNM batch", func() {
			defer wg.Done()
			run(i)
		})
	}
	done := make(chan struct{})
	c.goTracked("batch waiter", func() { wg.Wait(); close(done) })
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcome collects per-VM results from concurrent batches.
type outcome struct {
	mu   sync.Mutex
	done map[string]api.VMResult
}

func newOutcome() *outcome { return &outcome{done: map[string]api.VMResult{}} }

func (o *outcome) set(r api.VMResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done[r.Name] = r
}

func (o *outcome) result(id string, requested int, names []string, d *Decision, pending string) *api.Result {
	o.mu.Lock()
	defer o.mu.Unlock()
	res := &api.Result{ID: id, Requested: requested, Dropped: d.Dropped, Trace: d.Trace, Done: make([]api.VMResult, 0, len(names))}
	for _, n := range names {
		r, ok := o.done[n]
		if !ok {
			r = api.VMResult{Name: n, OK: false, Error: pending}
		}
		res.Done = append(res.Done, r)
	}
	return res
}

// batchGuard turns a panic in an LNM batch into a failed result for each
// of its VMs that has none, logged with its stack.
func (c *Controller) batchGuard(what string, names []string, res *outcome) {
	if r := recover(); r != nil {
		c.log.Error("panic in an LNM batch; its VMs are reported failed", "batch", what, "panic", r, "stack", string(debug.Stack()))
		res.mu.Lock()
		defer res.mu.Unlock()
		for _, n := range names {
			if _, ok := res.done[n]; !ok {
				res.done[n] = api.VMResult{Name: n, Error: "internal error in the controller (logged)"}
			}
		}
	}
}

// once runs a request; concurrent or repeated calls with the same request
// id (per user and kind) share the first call's result.
func (c *Controller) once(ctx context.Context, id api.Identity, kind, reqID string, f func() (*api.Result, error)) (*api.Result, error) {
	if reqID == "" {
		return f()
	}
	fut, leader := c.idem.begin(id.User + "\x00" + kind + "\x00" + reqID)
	if !leader {
		return fut.wait(ctx)
	}
	var res *api.Result
	var err error
	func() {
		defer func() { fut.finish(res, err) }()
		res, err = f()
	}()
	return res, err
}

// link returns the connected link of an LNM.
func (c *Controller) link(lnm string) api.Node {
	var link api.Node
	c.st.read(func() {
		if l := c.st.lnms[lnm]; l != nil {
			link = l.link
		}
	})
	return link
}

// ---------------------------------------------------------------------------
// start

// Start implements start(vm list, lnm list): it allocates names, runs the
// start_request chain, registers each VM, starts the batches on their LNMs
// concurrently and reports exactly what was done.
func (c *Controller) Start(ctx context.Context, id api.Identity, a api.StartArgs) (*api.Result, error) {
	return serve(c, "start", a, max(a.Count, len(a.Names)), func() (*api.Result, error) {
		if err := c.waitRecovered(ctx); err != nil {
			return nil, err
		}
		return c.once(ctx, id, "start", a.ID, func() (*api.Result, error) { return c.start(ctx, id, a, false) })
	})
}

// checkAllocation validates the memory and vCPUs a policy decided.
func checkAllocation(mem, cpus int) error {
	if mem < 1 || mem > api.MaxMemMB {
		return fmt.Errorf("policy set mem_mb to %d (1 to %d)", mem, api.MaxMemMB)
	}
	if cpus < 1 || cpus > api.MaxVCPUs {
		return fmt.Errorf("policy set vcpus to %d (1 to %d)", cpus, api.MaxVCPUs)
	}
	return nil
}

func (c *Controller) start(ctx context.Context, id api.Identity, a api.StartArgs, dry bool) (*api.Result, error) {
	n := max(a.Count, len(a.Names))
	mem, cpus := a.MemMB, a.VCPUs
	if mem == 0 {
		mem = c.cfg.DefaultMemMB
	}
	if cpus == 0 {
		cpus = c.cfg.DefaultVCPUs
	}
	var replayed *api.Result
	if a.ID != "" && !dry && len(a.Names) == 0 {
		// A retry of a request whose VMs exist (also after a controller
		// restart: the id travels in the VM objects the LNMs cache) starts
		// only what the first attempt did not, and reports both.
		if res := c.replay(id, a); res != nil {
			if len(res.Done) >= n {
				return res, nil
			}
			replayed = res
			n -= len(res.Done)
			a.Count = n
		}
	}
	req := &Request{ID: a.ID, Kind: KindStart, User: id, Cluster: a.Cluster, LNMs: a.LNMs, Args: a.Args, DryRun: dry}
	var shorts []string
	var pre []api.Drop
	fits := true
	// A cluster record allocation made but no VM joined goes again (one
	// more exclusive lock only for a start that registered nothing).
	registered := false
	defer func() {
		if !registered {
			c.st.write(func() { c.st.dropEmptyClusterLocked(id.User, a.Cluster) })
		}
	}()
	c.st.write(func() {
		if len(a.Names) == 0 {
			shorts, fits = c.st.allocLocked(id.User, a.Cluster, n)
			return
		}
		seen := map[string]bool{}
		for _, s := range a.Names {
			full := api.FullName(s, id.User, c.cfg.Domain)
			if _, taken := c.st.vms[full]; taken || seen[s] {
				pre = append(pre, api.Drop{VM: full, Reason: "already exists", By: "controller"})
				continue
			}
			seen[s] = true
			shorts = append(shorts, s)
		}
	})
	if !fits {
		return nil, api.Errorf(api.ErrBadRequest, "cluster %q: %d more VMs would get names longer than %d characters (cluster name and index); use a shorter cluster name", a.Cluster, n, api.MaxNameLen)
	}
	req.VMs = make([]ReqVM, len(shorts))
	for i, s := range shorts {
		req.VMs[i] = ReqVM{Name: api.FullName(s, id.User, c.cfg.Domain), Short: s, Owner: id.User, Cluster: a.Cluster, MemMB: mem, VCPUs: cpus}
	}
	d := NewDecision(req)
	d.Dropped = pre
	if c.cfg.GuestKeys != nil {
		if keys := c.cfg.GuestKeys(id.User); keys != "" {
			for i := range d.VMs {
				d.VMs[i].Data = api.StringMap{api.DataSSHKeys: keys}
			}
		}
	}
	if err := c.runChain(ctx, api.EvStartRequest, req, d); err != nil {
		return nil, err
	}
	res := newOutcome()
	names := make([]string, 0, len(req.VMs))
	groups := map[string][]*api.VM{}
	var order []string
	// Execute the decision: each kept VM on the node placement chose.
	for i := range req.VMs {
		rv, vd := &req.VMs[i], &d.VMs[i]
		if vd.Dropped {
			continue
		}
		names = append(names, rv.Name)
		fail := func(msg string) { res.set(api.VMResult{Name: rv.Name, Error: msg}) }
		if vd.LNM == "" {
			fail("no placement policy chose an LNM")
			continue
		}
		if why := c.st.placeable(vd.LNM); why != "" {
			fail(why)
			continue
		}
		if err := checkAllocation(vd.MemMB, vd.VCPUs); err != nil {
			fail(err.Error())
			continue
		}
		if dry {
			if err := api.ValidData(vd.Data); err != nil {
				fail("policy data: " + err.Error())
				continue
			}
			res.set(api.VMResult{Name: rv.Name, OK: true, LNM: vd.LNM, State: api.StatePending})
			continue
		}
		if err := c.registerVM(ctx, req, d, i); err != nil {
			fail("register_vm: " + err.Error())
			continue
		}
		if err := api.ValidData(vd.Data); err != nil {
			fail("policy data: " + err.Error())
			continue
		}
		vm := &api.VM{Name: rv.Name, Short: rv.Short, Owner: id.User, Cluster: a.Cluster, LNM: vd.LNM, State: api.StateStarting,
			MemMB: vd.MemMB, VCPUs: vd.VCPUs, Data: maps.Clone(vd.Data), Version: 1, Created: now(), Request: a.ID}
		var clone *api.VM
		ok := false
		why := "already exists"
		c.st.write(func() {
			// The node may have gone since the check: then the VM is
			// not registered at all. A guaranteed VM must fit what the
			// node can still guarantee, counted under the lock that
			// takes it.
			if why = c.st.placeableLocked(vm.LNM); why != "" {
				return
			}
			if why = c.st.guaranteeLocked(vm.LNM, vm); why != "" {
				return
			}
			if why = c.st.reservationFitLocked(vm.LNM, vm); why != "" {
				return
			}
			if rr := c.st.reservationOf(vm); rr != nil {
				vm.Data[api.DataReservationEnd] = rr.r.End.Format(time.RFC3339)
			}
			why = "already exists"
			if ok = c.st.insertLocked(vm); ok {
				clone = vm.Snapshot()
			}
		})
		registered = registered || ok
		if !ok {
			fail(why)
			continue
		}
		if _, seen := groups[vd.LNM]; !seen {
			order = append(order, vd.LNM)
		}
		groups[vd.LNM] = append(groups[vd.LNM], clone)
	}
	if dry || len(groups) == 0 {
		return merge(replayed, res.result(a.ID, n, names, d, "")), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) { c.startBatch(order[i], groups[order[i]], a.ID, res) }) {
		pending = "still starting when the request's deadline passed; watch its state"
	}
	return merge(replayed, res.result(a.ID, n, names, d, pending)), nil
}

// registerVM runs register_vm for VM i; a panic fails that VM only (the
// VMs registered before it are already in the state and must start).
func (c *Controller) registerVM(ctx context.Context, req *Request, d *Decision, i int) (err error) {
	defer c.recoverTo(&err, "register_vm")
	return c.hooks.RegisterVM(ctx, req, d, i)
}

// merge prepends what an earlier attempt of the same request did.
func merge(earlier, now *api.Result) *api.Result {
	if earlier == nil {
		return now
	}
	now.Requested += len(earlier.Done)
	now.Done = append(earlier.Done, now.Done...)
	now.Trace = append(earlier.Trace, now.Trace...)
	return now
}

// replay answers a retried start request from the VMs it created.
func (c *Controller) replay(id api.Identity, a api.StartArgs) *api.Result {
	var snap []*api.VM
	c.st.read(func() {
		vms := c.st.requests[id.User+"\x00"+a.ID]
		m := make(map[string]*api.VM, len(vms))
		for _, v := range vms {
			m[v.Name] = v
		}
		snap = cloneVMs(m, false, nil)
	})
	if len(snap) == 0 {
		return nil
	}
	api.SortVMs(snap)
	res := &api.Result{ID: a.ID, Requested: max(a.Count, len(a.Names))}
	for _, v := range snap {
		ok := v.State != api.StateFailed && v.State != api.StateLost && v.State != api.StateMissing
		r := api.VMResult{Name: v.Name, OK: ok, State: v.State, LNM: v.LNM, VM: v}
		if !ok {
			r.Error = "VM is " + string(v.State)
		}
		res.Done = append(res.Done, r)
	}
	res.Trace = []api.TraceStep{{Event: api.EvStartRequest, Handler: "controller", Action: "replayed",
		Detail: fmt.Sprintf("request id seen before: %d VMs exist", len(res.Done))}}
	return res
}

func (c *Controller) startBatch(lnm string, vms []*api.VM, reqID string, res *outcome) {
	c.startBatchFrom(lnm, vms, reqID, res, nil)
}

// startBatchFrom starts vms on lnm; origin, for a failover, names the
// fenced node each VM came from: a VM that fails to start goes back there
// as lost (its object kept for another attempt) instead of being removed.
func (c *Controller) startBatchFrom(lnm string, vms []*api.VM, reqID string, res *outcome, origin map[string]string) {
	names := make([]string, len(vms))
	for i, v := range vms {
		names[i] = v.Name
	}
	defer c.batchGuard("start on "+lnm, names, res)
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StartTimeout)
	defer cancel()
	link := c.link(lnm)
	var out api.LNMResults
	var err error
	if link == nil {
		err = fmt.Errorf("LNM %q disconnected", lnm)
	} else {
		out, err = link.Start(ctx, api.LNMStartArgs{VMs: vms})
	}
	byName := make(map[string]api.VMResult, len(out.Results))
	for _, r := range out.Results {
		byName[r.Name] = r
	}
	var evs []api.Event
	var acks []*api.VM
	stateEvents := c.pluginsWant(api.EvStateChanged)
	c.st.write(func() {
		for _, want := range vms {
			r, got := byName[want.Name]
			vm := c.st.vms[want.Name]
			if vm == nil {
				res.set(api.VMResult{Name: want.Name, Error: "removed while starting"})
				continue
			}
			switch {
			case err != nil && !got:
				// The LNM's fate is unknown: the VM may or may not run there.
				msg := fmt.Sprintf("start on LNM %s failed: %v", lnm, err)
				c.st.setStateLocked(vm, api.StateLost, msg)
				res.set(api.VMResult{Name: vm.Name, Error: msg + " (VM marked lost)", State: api.StateLost, LNM: lnm})
				evs = append(evs, api.Event{Type: api.EvStartComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: msg},
					api.Event{Type: api.EvVMLost, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
			case r.OK:
				st := r.State
				if st == "" {
					st = api.StateRunning
				}
				if vm.State == api.StateStarting || vm.State == api.StatePending {
					c.st.setStateLocked(vm, st, api.ReasonStarted)
				}
				predicted := r.Cached != 0 && r.Cached == vm.Version && vm.State == st && vm.Reason == api.ReasonStarted
				if !predicted && r.Cached >= vm.Version {
					// The LNM's cached object differs from ours under a version
					// at least as new: ours must supersede it.
					vm.Version = r.Cached + 1
				}
				cl := vm.Snapshot()
				if !predicted {
					acks = append(acks, cl)
				}
				res.set(api.VMResult{Name: vm.Name, OK: true, State: vm.State, LNM: lnm, VM: cl})
				evs = append(evs, api.Event{Type: api.EvStartComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, OK: true})
				if stateEvents {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: cl, User: vm.Owner, LNM: lnm, PluginsOnly: true})
				}
			default:
				msg := r.Error
				if msg == "" {
					msg = "LNM returned no result"
				}
				if from, ok := origin[vm.Name]; ok {
					msg = "restart on " + lnm + " failed: " + msg
					c.st.moveLocked(vm, from)
					c.st.setStateLocked(vm, api.StateLost, msg)
					res.set(api.VMResult{Name: vm.Name, Error: msg, State: api.StateLost, LNM: from})
					evs = append(evs, api.Event{Type: api.EvStartComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: msg})
					continue
				}
				c.st.setStateLocked(vm, api.StateFailed, msg)
				cl := vm.Snapshot()
				c.st.removeLocked(vm)
				res.set(api.VMResult{Name: vm.Name, Error: msg, State: api.StateFailed, LNM: lnm})
				evs = append(evs, api.Event{Type: api.EvStartComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, Error: msg})
			}
		}
	})
	c.ackStates(lnm, acks)
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// op_on

// OpOn implements op_on(operation, vm list).
func (c *Controller) OpOn(ctx context.Context, id api.Identity, a api.OpArgs) (*api.Result, error) {
	return serve(c, "op_on", a, len(a.VMs), func() (*api.Result, error) {
		return c.once(ctx, id, "op", a.ID, func() (*api.Result, error) { return c.opOn(ctx, id, a, false) })
	})
}

func (c *Controller) opOn(ctx context.Context, id api.Identity, a api.OpArgs, dry bool) (*api.Result, error) {
	req := &Request{ID: a.ID, Kind: KindOp, User: id, Op: a.Op, Args: a.Args, DryRun: dry, Force: a.Force}
	pre := c.resolve(id, a.VMs, req)
	d := NewDecision(req)
	d.Dropped = pre
	if err := c.runChain(ctx, api.EvOpRequest, req, d); err != nil {
		return nil, err
	}
	// The decision's op is what runs (a policy may have made a destroy a
	// pause); the result says so.
	op, err := api.ParseOp(string(d.Op))
	if err != nil {
		return nil, api.Errorf(api.ErrInternal, "the policy chain decided an invalid operation: %v", err)
	}
	res := newOutcome()
	groups := map[string][]string{}
	var order, names []string
	var gone []string // destroy of missing VMs: nothing to ask a node
	for i := range req.VMs {
		rv := &req.VMs[i]
		if d.VMs[i].Dropped {
			continue
		}
		names = append(names, rv.Name)
		vm, ok := c.st.VM(rv.Name)
		if !ok {
			res.set(api.VMResult{Name: rv.Name, Error: "no such VM"})
			continue
		}
		if op == api.OpDestroy && vm.State == api.StateMissing {
			if dry {
				res.set(api.VMResult{Name: rv.Name, OK: true, LNM: vm.LNM, State: api.StateDestroyed})
			} else {
				gone = append(gone, vm.Name)
			}
			continue
		}
		if !c.st.connected(vm.LNM) {
			res.set(api.VMResult{Name: rv.Name, Error: fmt.Sprintf("LNM %q is not connected (VM is %s; forget removes a lost VM's record)", vm.LNM, vm.State)})
			continue
		}
		if op == api.OpRestore {
			if m := c.st.modeOf(vm.LNM); m == api.ModeDraining || m == api.ModeMaintenance {
				res.set(api.VMResult{Name: rv.Name, Error: fmt.Sprintf("its node %s is %s: restoring would run it there (migrate it after the node is restored)", vm.LNM, m)})
				continue
			}
		}
		if dry {
			res.set(api.VMResult{Name: rv.Name, OK: true, LNM: vm.LNM, State: vm.State})
			continue
		}
		if _, seen := groups[vm.LNM]; !seen {
			order = append(order, vm.LNM)
		}
		groups[vm.LNM] = append(groups[vm.LNM], vm.Name)
	}
	if len(gone) > 0 {
		c.removeGone(gone, "destroyed (missing from its node)", op, a.ID, res)
	}
	finish := func(pending string) *api.Result {
		r := res.result(a.ID, len(a.VMs), names, d, pending)
		r.Op = op
		return r
	}
	if dry || len(groups) == 0 {
		return finish(""), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) { c.opBatch(order[i], op, a.Force, groups[order[i]], a.ID, res) }) {
		pending = "still in progress when the request's deadline passed; watch its state"
	}
	return finish(pending), nil
}

func (c *Controller) opBatch(lnm string, op api.Op, force bool, names []string, reqID string, res *outcome) {
	defer c.batchGuard(string(op)+" on "+lnm, names, res)
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
	defer cancel()
	link := c.link(lnm)
	var out api.LNMResults
	var err error
	if link == nil {
		err = fmt.Errorf("LNM %q disconnected", lnm)
	} else {
		out, err = link.OpOn(ctx, api.LNMOpArgs{Op: op, Names: names, Force: force})
	}
	byName := make(map[string]api.VMResult, len(out.Results))
	for _, r := range out.Results {
		byName[r.Name] = r
	}
	var evs []api.Event
	var acks []*api.VM
	var forget []string
	c.st.write(func() {
		for _, n := range names {
			r, got := byName[n]
			vm := c.st.vms[n]
			if vm == nil {
				res.set(api.VMResult{Name: n, Error: "VM vanished during the operation"})
				continue
			}
			detail := api.StringMap{"op": string(op)}
			switch {
			case !got:
				msg := "LNM returned no result"
				if err != nil {
					msg = fmt.Sprintf("%s on LNM %s failed: %v", op, lnm, err)
				}
				res.set(api.VMResult{Name: n, Error: msg, State: vm.State, LNM: lnm})
				evs = append(evs, api.Event{Type: api.EvOpComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: msg, Detail: detail})
			case !r.OK:
				res.set(api.VMResult{Name: n, Error: r.Error, State: vm.State, LNM: lnm})
				evs = append(evs, api.Event{Type: api.EvOpComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: r.Error, Detail: detail})
			case op == api.OpDestroy:
				c.st.setStateLocked(vm, api.StateDestroyed, "destroyed")
				cl := vm.Snapshot()
				c.st.removeLocked(vm)
				forget = append(forget, n)
				res.set(api.VMResult{Name: n, OK: true, State: api.StateDestroyed, LNM: lnm, VM: cl})
				evs = append(evs, api.Event{Type: api.EvOpComplete, VM: cl, User: cl.Owner, LNM: lnm, Req: reqID, OK: true, Detail: detail},
					api.Event{Type: api.EvStateChanged, VM: cl, User: cl.Owner, LNM: lnm})
			default:
				st := r.State
				if st == "" {
					st = vm.State
				}
				changed := c.st.setStateLocked(vm, st, string(op))
				cl := vm.Snapshot()
				acks = append(acks, cl)
				res.set(api.VMResult{Name: n, OK: true, State: vm.State, LNM: lnm, VM: cl})
				evs = append(evs, api.Event{Type: api.EvOpComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, OK: true, Detail: detail})
				if changed || op == api.OpReboot || op == api.OpCycle {
					evs = append(evs, api.Event{Type: api.EvStateChanged, VM: cl, User: vm.Owner, LNM: lnm, Detail: detail})
				}
			}
		}
	})
	c.ackStates(lnm, acks)
	c.forgetOn(lnm, forget)
	c.emit(evs...)
}

// removeGone removes the records of VMs the controller holds but no node
// does (missing, or lost and forgotten), giving back what they took.
func (c *Controller) removeGone(names []string, reason string, op api.Op, reqID string, res *outcome) {
	var evs []api.Event
	byNode := map[string][]string{}
	c.st.write(func() {
		for _, n := range names {
			vm := c.st.vms[n]
			if vm == nil {
				res.set(api.VMResult{Name: n, Error: "no such VM"})
				continue
			}
			lnm := vm.LNM
			c.st.setStateLocked(vm, api.StateDestroyed, reason)
			cl := vm.Snapshot()
			c.st.removeLocked(vm)
			byNode[lnm] = append(byNode[lnm], n)
			res.set(api.VMResult{Name: n, OK: true, State: api.StateDestroyed, LNM: lnm, VM: cl})
			if op != "" {
				evs = append(evs, api.Event{Type: api.EvOpComplete, VM: cl, User: cl.Owner, LNM: lnm, Req: reqID, OK: true, Detail: api.StringMap{"op": string(op)}})
			}
			evs = append(evs, api.Event{Type: api.EvVMForgotten, VM: cl, User: cl.Owner, LNM: lnm, Detail: api.StringMap{"reason": reason}},
				api.Event{Type: api.EvStateChanged, VM: cl, User: cl.Owner, LNM: lnm})
		}
	})
	for lnm, ns := range byNode {
		c.forgetOn(lnm, ns)
	}
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// forget

// Forget removes the records of missing or lost VMs (owner or admin, as
// the authorize chain allows): their capacity is given back and their
// node, if connected, drops its cached object. A VM a node still runs is
// refused: destroy it instead.
func (c *Controller) Forget(ctx context.Context, id api.Identity, a api.ForgetArgs) (*api.Result, error) {
	return serve(c, "forget", a, len(a.VMs), func() (*api.Result, error) { return c.forget(ctx, id, a) })
}

func (c *Controller) forget(ctx context.Context, id api.Identity, a api.ForgetArgs) (*api.Result, error) {
	req := &Request{Kind: KindForget, User: id}
	pre := c.resolve(id, a.VMs, req)
	d := NewDecision(req)
	d.Dropped = pre
	if err := c.hooks.Authorize(ctx, req, d); err != nil {
		return nil, err
	}
	out := newOutcome()
	var names, gone []string
	for i := range req.VMs {
		if d.VMs[i].Dropped {
			continue
		}
		rv := &req.VMs[i]
		names = append(names, rv.Name)
		vm, ok := c.st.VM(rv.Name)
		switch {
		case !ok:
			out.set(api.VMResult{Name: rv.Name, Error: "no such VM"})
		case vm.State != api.StateMissing && vm.State != api.StateLost:
			out.set(api.VMResult{Name: rv.Name, State: vm.State, LNM: vm.LNM,
				Error: fmt.Sprintf("VM is %s on %s: only missing or lost VMs are forgotten (destroy removes a VM a node holds)", vm.State, vm.LNM)})
		default:
			gone = append(gone, rv.Name)
		}
	}
	if len(gone) > 0 {
		c.removeGone(gone, "forgotten by "+id.User, "", "", out)
	}
	return out.result("", len(a.VMs), names, d, ""), nil
}

// ---------------------------------------------------------------------------
// migrate

// Migrate implements migrate(vm list, lnm list).
func (c *Controller) Migrate(ctx context.Context, id api.Identity, a api.MigrateArgs) (*api.Result, error) {
	return serve(c, "migrate", a, len(a.VMs), func() (*api.Result, error) {
		return c.once(ctx, id, "migrate", a.ID, func() (*api.Result, error) { return c.migrate(ctx, id, a, false) })
	})
}

type mkey struct{ src, dst string }

func (c *Controller) migrate(ctx context.Context, id api.Identity, a api.MigrateArgs, dry bool) (*api.Result, error) {
	req := &Request{ID: a.ID, Kind: KindMigrate, User: id, LNMs: a.LNMs, Args: a.Args, DryRun: dry}
	pre := c.resolve(id, a.VMs, req)
	d := NewDecision(req)
	d.Dropped = pre
	if err := c.runChain(ctx, api.EvMigrateRequest, req, d); err != nil {
		return nil, err
	}
	res := newOutcome()
	groups := map[mkey][]*api.VM{}
	var order []mkey
	var names []string
	for i := range req.VMs {
		rv, vd := &req.VMs[i], &d.VMs[i]
		if vd.Dropped {
			continue
		}
		names = append(names, rv.Name)
		vm, ok := c.st.VM(rv.Name)
		if !ok {
			res.set(api.VMResult{Name: rv.Name, Error: "no such VM"})
			continue
		}
		if vd.Target == "" {
			res.set(api.VMResult{Name: rv.Name, Error: "no migration target chosen by policy"})
			continue
		}
		if vd.Target == vm.LNM {
			res.set(api.VMResult{Name: rv.Name, Error: fmt.Sprintf("already on %s", vm.LNM)})
			continue
		}
		if vm.State != api.StateRunning && vm.State != api.StatePaused {
			res.set(api.VMResult{Name: rv.Name, Error: fmt.Sprintf("cannot migrate a VM that is %s", vm.State)})
			continue
		}
		if !c.st.connected(vm.LNM) {
			res.set(api.VMResult{Name: rv.Name, Error: fmt.Sprintf("source LNM %q is not connected", vm.LNM)})
			continue
		}
		if why := c.st.placeable(vd.Target); why != "" {
			res.set(api.VMResult{Name: rv.Name, Error: "target " + why})
			continue
		}
		if why := c.st.guarantee(vd.Target, vm); why != "" {
			res.set(api.VMResult{Name: rv.Name, Error: "target " + why})
			continue
		}
		if why := c.st.reservationFit(vd.Target, vm); why != "" {
			res.set(api.VMResult{Name: rv.Name, Error: "target " + why})
			continue
		}
		if dry {
			res.set(api.VMResult{Name: rv.Name, OK: true, LNM: vd.Target, State: vm.State})
			continue
		}
		k := mkey{vm.LNM, vd.Target}
		if _, seen := groups[k]; !seen {
			order = append(order, k)
		}
		groups[k] = append(groups[k], vm)
	}
	if dry || len(groups) == 0 {
		return res.result(a.ID, len(a.VMs), names, d, ""), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) {
		k := order[i]
		c.migrateBatch(k.src, k.dst, groups[k], a.ID, res)
	}) {
		pending = "still migrating when the request's deadline passed; watch its state"
	}
	return res.result(a.ID, len(a.VMs), names, d, pending), nil
}

// migrateBatch moves vms from src to dst: the target prepares, the source
// migrates, and each VM ends up recorded where it runs. When the source's
// answer is lost (its link failed mid-way), both nodes are asked where the
// VM is before anything is undone, so a migrated VM is never aborted away.
func (c *Controller) migrateBatch(src, dst string, vms []*api.VM, reqID string, res *outcome) {
	all := make([]string, len(vms))
	for i, v := range vms {
		all[i] = v.Name
	}
	defer c.batchGuard("migrate "+src+" to "+dst, all, res)
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
	defer cancel()
	slink, dlink := c.link(src), c.link(dst)
	dl, _ := c.st.LNM(dst)
	fail := func(vmName, msg string) { res.set(api.VMResult{Name: vmName, Error: msg, LNM: src}) }
	if slink == nil || dlink == nil || dl == nil {
		for _, v := range vms {
			fail(v.Name, "source or target LNM disconnected")
		}
		return
	}
	prev := map[string]api.VMState{}
	var evs []api.Event
	c.st.write(func() {
		for _, v := range vms {
			if vm := c.st.vms[v.Name]; vm != nil && vm.LNM == src {
				prev[v.Name] = vm.State
				c.st.setStateLocked(vm, api.StateMigrating, "to "+dst)
				evs = append(evs, api.Event{Type: api.EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: src})
			}
		}
	})
	c.emit(evs...)
	evs = nil
	// 1. The destination prepares (a no-op for peer-to-peer hypervisors).
	prep, perr := dlink.PrepareMigration(ctx, api.LNMStartArgs{VMs: vms})
	ready := map[string]bool{}
	refused := map[string]string{}
	for _, r := range prep.Results {
		if r.OK {
			ready[r.Name] = true
		} else if r.Error != "" {
			refused[r.Name] = r.Error
		}
	}
	var names []string
	for _, v := range vms {
		if ready[v.Name] && prev[v.Name] != "" {
			names = append(names, v.Name)
		}
	}
	// 2. The source migrates.
	var out api.LNMResults
	var merr error
	if len(names) > 0 {
		out, merr = slink.Migrate(ctx, api.LNMMigrateArgs{Names: names, Target: dst, Address: dl.Info.Address})
	}
	okm := map[string]api.VMResult{}
	for _, r := range out.Results {
		okm[r.Name] = r
	}
	// 3. Where the source's answer is missing, ask both nodes.
	var unknown []string
	for _, n := range names {
		if _, got := okm[n]; !got {
			unknown = append(unknown, n)
		}
	}
	where := c.locate(src, dst, slink, dlink, unknown)
	var abort []string
	var dstAcks, srcAcks []*api.VM
	var srcForget []string
	c.st.write(func() {
		for _, v := range vms {
			vm := c.st.vms[v.Name]
			if vm == nil {
				fail(v.Name, "VM vanished during migration")
				continue
			}
			p, marked := prev[v.Name]
			if !marked {
				fail(v.Name, "VM left "+src+" before the migration began")
				continue
			}
			r, got := okm[v.Name]
			located := !got
			if !got {
				switch where[v.Name] {
				case dst:
					r, got = api.VMResult{Name: v.Name, OK: true, State: p}, true
				case src:
					r, got = api.VMResult{Name: v.Name, Error: fmt.Sprintf("source did not answer (%v); the VM is still there", merr)}, true
				}
			}
			switch {
			case !ready[v.Name]:
				if perr != nil {
					// The target may have prepared a copy it could
					// not tell of: stale if it ever reports it.
					c.st.markStaleLocked(dst, v.Name)
				}
				msg := "target could not prepare the migration"
				if perr != nil {
					msg += ": " + perr.Error()
				}
				if e := refused[v.Name]; e != "" {
					msg = "target refused: " + e
				}
				c.st.setStateLocked(vm, p, "migration failed")
				srcAcks = append(srcAcks, vm.Snapshot())
				fail(v.Name, msg)
				evs = append(evs, api.Event{Type: api.EvMigrateComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: src, Req: reqID, Error: msg})
			case got && r.OK:
				if located {
					// The source never said it let go: a copy it may
					// still hold is stale, destroyed if it reports it.
					c.st.markStaleLocked(src, v.Name)
				}
				c.st.moveLocked(vm, dst)
				st := r.State
				if st == "" {
					st = p
				}
				c.st.setStateLocked(vm, st, "migrated from "+src)
				cl := vm.Snapshot()
				dstAcks = append(dstAcks, cl)
				srcForget = append(srcForget, v.Name)
				detail := api.StringMap{"from": src, "to": dst}
				res.set(api.VMResult{Name: v.Name, OK: true, State: vm.State, LNM: dst, VM: cl})
				evs = append(evs, api.Event{Type: api.EvMigrateComplete, VM: cl, User: vm.Owner, LNM: dst, Req: reqID, OK: true, Detail: detail},
					api.Event{Type: api.EvStateChanged, VM: cl, User: vm.Owner, LNM: dst, Detail: detail})
			case got:
				msg := r.Error
				if msg == "" {
					msg = "source returned no result"
				}
				c.st.setStateLocked(vm, p, "migration failed")
				srcAcks = append(srcAcks, vm.Snapshot())
				abort = append(abort, v.Name)
				c.st.markStaleLocked(dst, v.Name) // should the abort not reach it
				fail(v.Name, "migration failed, VM stays on "+src+": "+msg)
				evs = append(evs, api.Event{Type: api.EvMigrateComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: src, Req: reqID, Error: msg})
			default:
				// Neither node could say: nothing is undone, and the VM
				// is lost until a node reports it.
				msg := fmt.Sprintf("migration outcome unknown (%v); the VM is marked lost until its node reports it", merr)
				c.st.setStateLocked(vm, api.StateLost, msg)
				res.set(api.VMResult{Name: v.Name, Error: msg, State: api.StateLost, LNM: src})
				evs = append(evs, api.Event{Type: api.EvMigrateComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: src, Req: reqID, Error: msg},
					api.Event{Type: api.EvVMLost, VM: vm.Snapshot(), User: vm.Owner, LNM: src})
			}
		}
	})
	if len(abort) > 0 {
		actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := dlink.AbortMigration(actx, api.NamesArgs{Names: abort}); err != nil {
			c.log.Warn("aborting incoming migration failed", "lnm", dst, "err", err)
		}
		acancel()
	}
	c.ack(dst, dstAcks)
	c.ack(src, srcAcks)
	c.forgetOn(src, srcForget)
	c.emit(evs...)
}

// locate asks the source and the target of a migration which of names
// each holds; the answer maps a name to the node that has it running or
// paused ("" when neither could say).
func (c *Controller) locate(src, dst string, slink, dlink api.Node, names []string) map[string]string {
	where := map[string]string{}
	if len(names) == 0 {
		return where
	}
	ask := func(node string, link api.Node) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rep, err := link.Details(ctx, api.NamesArgs{Names: names})
		if err != nil {
			c.log.Warn("asking a node where migrated VMs are", "lnm", node, "err", err)
			return
		}
		for _, g := range rep.Guests {
			if g.State == api.StateRunning || g.State == api.StatePaused {
				if where[g.Name] == "" || node == dst {
					where[g.Name] = node
				}
			}
		}
	}
	ask(src, slink)
	ask(dst, dlink)
	return where
}

// ---------------------------------------------------------------------------
// plan

// Plan dry-runs a request through the live chain and returns the decision
// trace; nothing changes.
func (c *Controller) Plan(ctx context.Context, id api.Identity, a api.PlanArgs) (*api.Result, error) {
	var vms int
	switch {
	case a.Start != nil:
		vms = max(a.Start.Count, len(a.Start.Names))
	case a.Op != nil:
		vms = len(a.Op.VMs)
	case a.Migrate != nil:
		vms = len(a.Migrate.VMs)
	}
	return serve(c, "plan", a, vms, func() (*api.Result, error) {
		switch {
		case a.Start != nil:
			return c.start(ctx, id, *a.Start, true)
		case a.Op != nil:
			return c.opOn(ctx, id, *a.Op, true)
		default:
			return c.migrate(ctx, id, *a.Migrate, true)
		}
	})
}

// ---------------------------------------------------------------------------
// console

// ConsoleTarget authorizes attaching to a VM's serial console — its owner
// or an admin, as the authorize chain allows (request kind "console") —
// and returns the VM, whose node serves the console. Attaching needs a VM
// that runs; reading the log (logOnly) any VM its node still holds.
func (c *Controller) ConsoleTarget(ctx context.Context, id api.Identity, vm string, logOnly bool) (*api.VM, error) {
	req := &Request{Kind: KindConsole, User: id}
	pre := c.resolve(id, []string{vm}, req)
	if len(pre) > 0 {
		return nil, api.Errorf(api.ErrNotFound, "console: no VM %s", vm)
	}
	d := NewDecision(req)
	if err := c.hooks.Authorize(ctx, req, d); err != nil {
		return nil, err
	}
	if d.VMs[0].Dropped {
		reason := "refused by policy"
		if len(d.Dropped) > 0 {
			reason = d.Dropped[0].Reason
		}
		return nil, api.Errorf(api.ErrForbidden, "console of %s: %s", vm, reason)
	}
	v, ok := c.st.VM(vm)
	if !ok {
		return nil, api.Errorf(api.ErrNotFound, "console: no VM %s", vm)
	}
	if v.Owner != id.User && !id.Admin {
		return nil, api.Errorf(api.ErrForbidden, "console of %s: only its owner and admins attach to it", vm)
	}
	switch v.State {
	case api.StateRunning, api.StatePaused, api.StateStarting:
	case api.StateShutoff, api.StateCrashed, api.StateHibernated:
		if !logOnly {
			return nil, api.Errorf(api.ErrBadRequest, "console of %s: the VM is %s (its log: console --log)", vm, v.State)
		}
	default:
		return nil, api.Errorf(api.ErrBadRequest, "console of %s: the VM is %s", vm, v.State)
	}
	if !c.st.connected(v.LNM) {
		return nil, api.Errorf(api.ErrUnavailable, "console of %s: its node %s is not connected", vm, v.LNM)
	}
	return v, nil
}
