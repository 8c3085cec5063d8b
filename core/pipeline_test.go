package core

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
)

// policy is a Go policy double whose every stage a test can program: it
// places new VMs on place, sends migrations to target, may rewrite an op,
// and panics in the stage named by panicIn.
type policy struct {
	mu      sync.Mutex
	place   string
	target  string
	rewrite api.Op
	panicIn string
	notes   []api.Event
	qos     string        // data qos of new VMs
	data    api.StringMap // data of new VMs
}

func (p *policy) boom(stage string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.panicIn == stage {
		panic("injected panic in " + stage)
	}
}

func (p *policy) Authenticate(_ context.Context, c Credentials) (api.Identity, error) {
	p.boom("authenticate")
	if c.Password != "pw" {
		return api.Identity{}, api.ErrUnauthorized
	}
	return api.Identity{User: c.User, Admin: c.User == "root"}, nil
}

func (p *policy) Authorize(_ context.Context, r *Request, d *Decision) error {
	p.boom("authorize")
	return nil
}

func (p *policy) Request(_ context.Context, event string, r *Request, d *Decision) error {
	p.boom(event)
	p.mu.Lock()
	defer p.mu.Unlock()
	step := api.TraceStep{Event: event, Handler: "test", Action: "approved"}
	switch event {
	case api.EvStartRequest:
		for i := range d.VMs {
			d.VMs[i].LNM = p.place
			if p.qos != "" {
				d.VMs[i].Data = api.StringMap{api.DataQoS: p.qos}
			}
			if len(p.data) > 0 {
				d.VMs[i].Data = maps.Clone(p.data)
			}
		}
	case api.EvMigrateRequest:
		for i := range d.VMs {
			d.VMs[i].Target = p.target
		}
	case api.EvOpRequest:
		if p.rewrite != "" {
			d.Op = p.rewrite
			step.Action = "modified"
		}
	}
	d.Trace = append(d.Trace, step)
	return nil
}

func (p *policy) RegisterVM(_ context.Context, r *Request, d *Decision, i int) error {
	p.boom(api.EvRegisterVM)
	return nil
}

func (p *policy) Notify(ev api.Event) {
	p.boom("notify")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notes = append(p.notes, ev)
}

func (p *policy) set(f func(p *policy)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// pipeline is a controller with two fake nodes, n1 and n2, peered so a
// migration moves the guest.
type pipeline struct {
	c      *Controller
	p      *policy
	n1, n2 *apitest.Node
}

var alice = api.Identity{User: "alice"}

func newPipeline(t *testing.T) *pipeline {
	t.Helper()
	p := &policy{place: "n1", target: "n2"}
	c := New(Config{Domain: "usher.test", OpTimeout: 10 * time.Second, StartTimeout: 10 * time.Second}, p)
	t.Cleanup(c.Close)
	pl := &pipeline{c: c, p: p, n1: apitest.NewNode("n1"), n2: apitest.NewNode("n2")}
	pl.n1.Peers["n2"], pl.n2.Peers["n1"] = pl.n2, pl.n1
	for _, n := range []*apitest.Node{pl.n1, pl.n2} {
		if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: n.Name, CPUs: 16, MemMB: 16384}}, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if err := c.State().Check(); err != nil {
			t.Errorf("state invariants at the end: %v", err)
		}
	})
	return pl
}

func (pl *pipeline) start(t *testing.T, n int) []string {
	t.Helper()
	r, err := pl.c.Start(context.Background(), alice, api.StartArgs{Cluster: "web", Count: n, MemMB: 1024, VCPUs: 2})
	if err != nil || r.OK() != n {
		t.Fatalf("start: %v %+v", err, r)
	}
	var names []string
	for _, d := range r.Done {
		names = append(names, d.Name)
	}
	return names
}

func (pl *pipeline) vm(t *testing.T, name string) *api.VM {
	t.Helper()
	v, ok := pl.c.State().VM(name)
	if !ok {
		t.Fatalf("%s is gone from the state", name)
	}
	return v
}

func (pl *pipeline) free(name string) (int, int) {
	l, _ := pl.c.State().LNM(name)
	return l.Status.FreeMemMB, l.Status.FreeVCPUs
}

func TestStartPlacesWhatPolicyChose(t *testing.T) {
	pl := newPipeline(t)
	names := pl.start(t, 3)
	for _, n := range names {
		if v := pl.vm(t, n); v.LNM != "n1" || v.State != api.StateRunning {
			t.Fatalf("%s: %+v", n, v)
		}
		if g, ok := pl.n1.Guest(n); !ok || g.State != api.StateRunning {
			t.Fatalf("%s not on n1's hypervisor", n)
		}
	}
	if mem, cpu := pl.free("n1"); mem != 16384-3*1024 || cpu != 16-3*2 {
		t.Fatalf("n1 free %d MiB, %d vCPUs after three 1 GiB/2-vCPU VMs", mem, cpu)
	}
}

// TestPolicyRewriteIsWhatRuns: an op_request handler that makes a destroy
// a pause: the VM is paused, not destroyed, and the result says which op ran.
func TestPolicyRewriteIsWhatRuns(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.p.set(func(p *policy) { p.rewrite = api.OpPause })
	r, err := pl.c.OpOn(context.Background(), alice, api.OpArgs{Op: api.OpDestroy, VMs: []string{name}})
	if err != nil || r.OK() != 1 || r.Op != api.OpPause {
		t.Fatalf("destroy rewritten to pause: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.State != api.StatePaused {
		t.Fatalf("VM is %s, want paused", v.State)
	}
	if pl.n1.Called("op_on:destroy") || !pl.n1.Called("op_on:pause") {
		t.Fatalf("the node was asked %v", pl.n1.Calls())
	}
	if len(r.Trace) == 0 || r.Trace[len(r.Trace)-1].Action != "modified" {
		t.Fatalf("trace %+v does not say the request was modified", r.Trace)
	}
}

// TestForceReachesTheNode: --force is part of the op the node runs, for
// exactly the request that asked for it.
func TestForceReachesTheNode(t *testing.T) {
	pl := newPipeline(t)
	names := pl.start(t, 2)
	var mu sync.Mutex
	forced := map[string]bool{}
	pl.n1.OnOp = func(_ context.Context, a api.LNMOpArgs) (api.LNMResults, error) {
		mu.Lock()
		for _, n := range a.Names {
			forced[n] = a.Force
		}
		mu.Unlock()
		return pl.n1.DefaultOp(a), nil
	}
	for i, force := range []bool{true, false} {
		r, err := pl.c.OpOn(context.Background(), alice, api.OpArgs{Op: api.OpReboot, VMs: names[i : i+1], Force: force})
		if err != nil || r.OK() != 1 {
			t.Fatalf("reboot (force %v): %v %+v", force, err, r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !forced[names[0]] || forced[names[1]] {
		t.Fatalf("force seen by the node: %v (want %s forced, %s not)", forced, names[0], names[1])
	}
}

func TestMigrateMovesTheVM(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 1 || r.Done[0].LNM != "n2" {
		t.Fatalf("migrate: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n2" || v.State != api.StateRunning {
		t.Fatalf("after migration: %+v", v)
	}
	if _, ok := pl.n2.Guest(name); !ok {
		t.Fatal("the guest did not arrive on n2")
	}
	if mem, _ := pl.free("n1"); mem != 16384 {
		t.Fatalf("n1 still charged: %d MiB free", mem)
	}
	if mem, _ := pl.free("n2"); mem != 16384-1024 {
		t.Fatalf("n2 not charged: %d MiB free", mem)
	}
}

// TestMigrateTargetRefuses: the target's prepare fails for the VM: it stays
// running on its node, and the source is never asked to migrate.
func TestMigrateTargetRefuses(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n2.OnPrepare = func(_ context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
		return api.LNMResults{Results: []api.VMResult{{Name: a.VMs[0].Name, Error: "no room"}}}, nil
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "target refused: no room") {
		t.Fatalf("migrate to a refusing target: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n1" || v.State != api.StateRunning {
		t.Fatalf("after a refused migration: %+v", v)
	}
	if pl.n1.Called("migrate") {
		t.Fatal("the source was asked to migrate to a target that refused")
	}
}

// TestMigrateSourceFailsAborts: the source reports the migration failed:
// the VM stays, and the target's preparation is aborted.
func TestMigrateSourceFailsAborts(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n1.OnMigrate = func(_ context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
		return api.LNMResults{Results: []api.VMResult{{Name: a.Names[0], Error: "connection refused"}}}, nil
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "VM stays on n1") {
		t.Fatalf("migrate with a failing source: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n1" || v.State != api.StateRunning {
		t.Fatalf("after a failed migration: %+v", v)
	}
	if !pl.n2.Called("abort_migration") {
		t.Fatalf("the target was not told to abort: %v", pl.n2.Calls())
	}
	if _, ok := pl.n1.Guest(name); !ok {
		t.Fatal("the guest left n1")
	}
}

// TestMigrateSourceLinkFailsAfterMoving: the source moved the guest, then
// its link failed before answering. The controller asks both nodes, finds
// the VM on the target, records it there, and aborts nothing (an abort
// would destroy the arrived guest).
func TestMigrateSourceLinkFailsAfterMoving(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n1.OnMigrate = func(_ context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
		pl.n1.DefaultMigrate(a)
		return api.LNMResults{}, apitest.ErrDown
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 1 || r.Done[0].LNM != "n2" {
		t.Fatalf("migrate whose source link failed after moving: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n2" || v.State != api.StateRunning {
		t.Fatalf("recorded %+v, want running on n2", v)
	}
	if pl.n2.Called("abort_migration") {
		t.Fatal("the arrived guest was aborted away")
	}
	if _, ok := pl.n2.Guest(name); !ok {
		t.Fatal("the guest is gone from n2")
	}
}

// TestMigrateSourceLinkFailsBeforeMoving: the source's link failed and the
// guest never left: it is recorded on the source and the target aborts.
func TestMigrateSourceLinkFailsBeforeMoving(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n1.OnMigrate = func(context.Context, api.LNMMigrateArgs) (api.LNMResults, error) {
		return api.LNMResults{}, apitest.ErrDown
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 0 {
		t.Fatalf("migrate whose source link failed: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n1" || v.State != api.StateRunning {
		t.Fatalf("recorded %+v, want running on n1", v)
	}
	if !pl.n2.Called("abort_migration") {
		t.Fatal("the target's preparation was not aborted")
	}
}

// TestMigrateOutcomeUnknown: the source's link failed and neither node can
// say where the guest is: nothing is undone, the VM is lost until a node
// reports it.
func TestMigrateOutcomeUnknown(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n1.OnMigrate = func(context.Context, api.LNMMigrateArgs) (api.LNMResults, error) {
		return api.LNMResults{}, apitest.ErrDown
	}
	down := func(context.Context, api.NamesArgs) (api.GuestsReply, error) {
		return api.GuestsReply{}, apitest.ErrDown
	}
	pl.n1.OnDetails, pl.n2.OnDetails = down, down
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 0 || r.Done[0].State != api.StateLost {
		t.Fatalf("migrate with an unknown outcome: %v %+v", err, r)
	}
	if pl.n2.Called("abort_migration") {
		t.Fatal("an abort was sent without knowing where the guest is")
	}
	if v := pl.vm(t, name); v.State != api.StateLost {
		t.Fatalf("recorded %+v, want lost", v)
	}
}

// TestMigratePrepareLinkDown: the target's link fails during prepare: the
// VM stays where it is.
func TestMigratePrepareLinkDown(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	pl.n2.OnPrepare = func(context.Context, api.LNMStartArgs) (api.LNMResults, error) {
		return api.LNMResults{}, apitest.ErrDown
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "could not prepare") {
		t.Fatalf("migrate to a target whose link is down: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.LNM != "n1" || v.State != api.StateRunning {
		t.Fatalf("recorded %+v", v)
	}
}

// TestDestroyOfShutoffGivesBackOnce: a shut-off VM no longer takes its
// node's capacity; destroying it gives nothing back a second time.
func TestDestroyOfShutoffGivesBackOnce(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	ctx := context.Background()
	if r, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpShutdown, VMs: []string{name}}); err != nil || r.OK() != 1 {
		t.Fatalf("shutdown: %v %+v", err, r)
	}
	if mem, cpu := pl.free("n1"); mem != 16384 || cpu != 16 {
		t.Fatalf("after shutdown n1 has %d MiB, %d vCPUs free", mem, cpu)
	}
	if r, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpDestroy, VMs: []string{name}}); err != nil || r.OK() != 1 {
		t.Fatalf("destroy: %v %+v", err, r)
	}
	if mem, cpu := pl.free("n1"); mem != 16384 || cpu != 16 {
		t.Fatalf("after destroying a shut-off VM n1 has %d MiB, %d vCPUs free (size 16384, 16)", mem, cpu)
	}
}

// TestMissingVMCanBeRemoved: a VM gone from its node is missing; destroy
// and forget both remove its record and what it took.
func TestMissingVMCanBeRemoved(t *testing.T) {
	pl := newPipeline(t)
	names := pl.start(t, 2)
	ctx := context.Background()
	gen := func() uint64 {
		var g uint64
		pl.c.st.read(func() { g = pl.c.st.lnms["n1"].gen })
		return g
	}
	for _, n := range names {
		pl.c.HandleReport("n1", gen(), api.Report{Changes: []api.Guest{{Name: n, State: api.StateMissing, Reason: "vanished"}}})
		if v := pl.vm(t, n); v.State != api.StateMissing {
			t.Fatalf("%s is %s, want missing", n, v.State)
		}
	}
	if r, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpDestroy, VMs: []string{names[0]}}); err != nil || r.OK() != 1 {
		t.Fatalf("destroy of a missing VM: %v %+v", err, r)
	}
	if r, err := pl.c.Forget(ctx, alice, api.ForgetArgs{VMs: []string{names[1]}}); err != nil || r.OK() != 1 {
		t.Fatalf("forget of a missing VM: %v %+v", err, r)
	}
	if n := pl.c.State().Counts().VMs; n != 0 {
		t.Fatalf("%d VMs left", n)
	}
	if mem, _ := pl.free("n1"); mem != 16384 {
		t.Fatalf("n1 has %d MiB free after both are removed", mem)
	}
	// A running VM is not forgotten.
	name := pl.start(t, 1)[0]
	r, err := pl.c.Forget(ctx, alice, api.ForgetArgs{VMs: []string{name}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "only missing or lost") {
		t.Fatalf("forget of a running VM: %v %+v", err, r)
	}
}

// TestPanicInAnyStageFailsOneCall: a panic injected into each stage of the
// pipeline fails that call only (internal error, logged); no lock stays
// held, and the next call, an LNM report and a list all work.
func TestPanicInAnyStageFailsOneCall(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	ctx := context.Background()
	calls := map[string]func() error{
		"authenticate": func() error {
			_, err := pl.c.Authenticate(ctx, Credentials{User: "alice", Password: "pw"})
			return err
		},
		"authorize": func() error {
			_, err := pl.c.List(ctx, alice, api.ListArgs{})
			return err
		},
		api.EvStartRequest: func() error {
			_, err := pl.c.Start(ctx, alice, api.StartArgs{Cluster: "x", Count: 1})
			return err
		},
		api.EvRegisterVM: func() error {
			_, err := pl.c.Start(ctx, alice, api.StartArgs{Cluster: "y", Count: 1})
			return err
		},
		api.EvOpRequest: func() error {
			_, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpPause, VMs: []string{name}})
			return err
		},
		api.EvMigrateRequest: func() error {
			_, err := pl.c.Migrate(ctx, alice, api.MigrateArgs{VMs: []string{name}})
			return err
		},
	}
	for stage, call := range calls {
		pl.p.set(func(p *policy) { p.panicIn = stage })
		err := call()
		pl.p.set(func(p *policy) { p.panicIn = "" })
		if stage == api.EvRegisterVM {
			// register_vm runs per VM: its VM fails, the request reports it.
			if err != nil {
				t.Fatalf("%s: %v", stage, err)
			}
		} else if !errors.Is(err, api.ErrInternal) {
			t.Fatalf("panic in %s: %v, want an internal error", stage, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := pl.c.List(ctx, alice, api.ListArgs{})
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("list after a panic in %s: %v", stage, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the controller is wedged after a panic in %s", stage)
		}
	}
	// A panic in a node's link fails its batch's VMs only.
	pl.n1.OnOp = func(context.Context, api.LNMOpArgs) (api.LNMResults, error) { panic("link panic") }
	r, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpPause, VMs: []string{name}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "internal error") {
		t.Fatalf("panicking link: %v %+v", err, r)
	}
	pl.n1.OnOp = nil
	// A panic delivering an event to policies leaves the events flowing.
	pl.p.set(func(p *policy) { p.panicIn = "notify" })
	if r, err := pl.c.OpOn(ctx, alice, api.OpArgs{Op: api.OpPause, VMs: []string{name}}); err != nil || r.OK() != 1 {
		t.Fatalf("op with a panicking notification: %v %+v", err, r)
	}
	pl.p.set(func(p *policy) { p.panicIn = "" })
}

// TestNodeBelievedOnlyAboutItsOwnVMs: a node reporting a VM another
// connected node holds creates a conflict; the VM stays; a node cannot
// plant a VM the controller has no record of (outside recovery).
func TestNodeBelievedOnlyAboutItsOwnVMs(t *testing.T) {
	pl := newPipeline(t)
	name := pl.start(t, 1)[0]
	var gen2 uint64
	pl.c.st.read(func() { gen2 = pl.c.st.lnms["n2"].gen })
	pl.c.HandleReport("n2", gen2, api.Report{Changes: []api.Guest{
		{Name: name, State: api.StateRunning, MemMB: 1024, VCPUs: 2},
		{Name: "planted1.bob.usher.test", State: api.StateRunning, MemMB: 512, VCPUs: 1},
	}})
	if v := pl.vm(t, name); v.LNM != "n1" {
		t.Fatalf("n2's report moved the VM: %+v", v)
	}
	if _, ok := pl.c.State().VM("planted1.bob.usher.test"); ok {
		t.Fatal("a node planted a VM for bob")
	}
	rep, err := pl.c.List(context.Background(), api.Identity{User: "root", Admin: true}, api.ListArgs{All: true, Lists: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Conflicts) != 1 || rep.Conflicts[0].Name != name || rep.Conflicts[0].LNM != "n2" {
		t.Fatalf("conflicts %+v", rep.Conflicts)
	}
	if len(rep.Unmanaged) != 1 || rep.Unmanaged[0].Name != "planted1.bob.usher.test" {
		t.Fatalf("unmanaged %+v", rep.Unmanaged)
	}
	if c := pl.c.State().Counts(); c.Conflicts != 1 || c.VMs != 1 {
		t.Fatalf("counts %+v", c)
	}
}

// TestAdoptionOnlyInRecovery: outside the startup window a node that
// registers with managed guests the controller has no record of gets
// them listed as unmanaged; a node known from before a restart has its
// guests adopted at its first registration, not at a later one.
func TestAdoptionOnlyInRecovery(t *testing.T) {
	pl := newPipeline(t)
	ctx := context.Background()
	rogue := apitest.NewNode("n3")
	rogue.Put(api.Guest{Name: "planted.bob.usher.test", State: api.StateRunning, MemMB: 64, VCPUs: 1})
	if _, err := pl.c.AttachLNM(ctx, api.Hello{Node: api.NodeInfo{Name: "n3", CPUs: 4, MemMB: 4096}}, rogue, rogue.Guests()); err != nil {
		t.Fatal(err)
	}
	if _, ok := pl.c.State().VM("planted.bob.usher.test"); ok {
		t.Fatal("an unknown node's guest was adopted outside recovery")
	}
	if n := pl.c.State().Counts().Unmanaged; n != 1 {
		t.Fatalf("%d unmanaged, want the planted guest", n)
	}
	// A node known from before a restart: adopted at its first registration.
	pl.c.ExpectLNMs([]api.NodeInfo{{Name: "n4"}})
	known := apitest.NewNode("n4")
	known.Put(api.Guest{Name: "db1.alice.usher.test", State: api.StateRunning, MemMB: 64, VCPUs: 1})
	g, err := pl.c.AttachLNM(ctx, api.Hello{Node: api.NodeInfo{Name: "n4", CPUs: 4, MemMB: 4096}}, known, known.Guests())
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := pl.c.State().VM("db1.alice.usher.test"); !ok || v.LNM != "n4" {
		t.Fatal("a known node's guest was not adopted at its first registration")
	}
	pl.c.DetachLNM("n4", g, "test")
	known.Put(api.Guest{Name: "db2.alice.usher.test", State: api.StateRunning, MemMB: 64, VCPUs: 1})
	if _, err := pl.c.AttachLNM(ctx, api.Hello{Node: api.NodeInfo{Name: "n4", CPUs: 4, MemMB: 4096}}, known, known.Guests()); err != nil {
		t.Fatal(err)
	}
	if _, ok := pl.c.State().VM("db2.alice.usher.test"); ok {
		t.Fatal("a new guest was adopted at a later registration")
	}
}
