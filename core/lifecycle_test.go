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
	"github.com/usher-vm/usher/internal/waitfor"
)

var root = api.Identity{User: "root", Admin: true}

// saved records what SaveModes was given.
type saved struct {
	mu   sync.Mutex
	last map[string]ModeRecord
	n    int
}

func (s *saved) save(m map[string]ModeRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.n = maps.Clone(m), s.n+1
	return nil
}

func (s *saved) get() map[string]ModeRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.last)
}

// lifecycle is a controller with nodes n1 and n2 (peered) that saves its
// modes and fences with fence.
func newLifecycle(t *testing.T, fence func(context.Context, api.NodeInfo) error) (*pipeline, *saved, map[string]uint64) {
	t.Helper()
	p := &policy{place: "n1", target: "n2"}
	sv := &saved{}
	c := New(Config{Domain: "usher.test", OpTimeout: 10 * time.Second, StartTimeout: 10 * time.Second,
		SaveModes: sv.save, Fence: fence, FenceTimeout: 200 * time.Millisecond}, p)
	t.Cleanup(c.Close)
	pl := &pipeline{c: c, p: p, n1: apitest.NewNode("n1"), n2: apitest.NewNode("n2")}
	pl.n1.Peers["n2"], pl.n2.Peers["n1"] = pl.n2, pl.n1
	gens := map[string]uint64{}
	for _, n := range []*apitest.Node{pl.n1, pl.n2} {
		gen, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: n.Name, CPUs: 16, MemMB: 16384}}, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		gens[n.Name] = gen
	}
	t.Cleanup(func() {
		if err := c.State().Check(); err != nil {
			t.Errorf("state invariants at the end: %v", err)
		}
	})
	return pl, sv, gens
}

// n1ReturnsWithStaleCopy registers n1 again with the guests it holds,
// among them a copy of VM name, which runs on n2: the copy is destroyed
// and the VM stays running on n2.
func (pl *pipeline) n1ReturnsWithStaleCopy(t *testing.T, name string) {
	t.Helper()
	if _, err := pl.c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n1", CPUs: 16, MemMB: 16384}}, pl.n1, pl.n1.Guests()); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "the stale copy on n1 destroyed", func() bool {
		_, ok := pl.n1.Guest(name)
		return !ok
	})
	if v := pl.vm(t, name); v.LNM != "n2" || v.State != api.StateRunning {
		t.Fatalf("after n1 came back: %+v", v)
	}
}

func (pl *pipeline) mode(t *testing.T, name string) *api.LNM {
	t.Helper()
	l, ok := pl.c.State().LNM(name)
	if !ok {
		t.Fatalf("no LNM %s", name)
	}
	return l
}

func (p *policy) events(typ string) []api.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []api.Event
	for _, e := range p.notes {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// TestIsolatedNodeTakesNothingNew: an isolated node keeps its VMs running
// and is refused as the node of a start and the target of a migration,
// whatever the placement policy chose; restoring it makes it placeable
// again. Every change is saved and announced.
func TestIsolatedNodeTakesNothingNew(t *testing.T) {
	pl, sv, _ := newLifecycle(t, nil)
	name := pl.start(t, 1)[0]
	if _, err := pl.c.SetLNMMode(context.Background(), alice, api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeIsolated}); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("a user isolated a node: %v", err)
	}
	l, err := pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeIsolated, Reason: "disk errors"})
	if err != nil || l.Mode != api.ModeIsolated || l.ModeReason != "disk errors" || l.ModeBy != "root" {
		t.Fatalf("isolate: %v %+v", err, l)
	}
	if got := sv.get(); got["n1"].Mode != api.ModeIsolated || got["n1"].Reason != "disk errors" {
		t.Fatalf("saved modes: %+v", got)
	}
	r, err := pl.c.Start(context.Background(), alice, api.StartArgs{Cluster: "web", Count: 1})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "isolated") {
		t.Fatalf("a start placed on an isolated node: %v %+v", err, r)
	}
	if v := pl.vm(t, name); v.State != api.StateRunning || v.LNM != "n1" {
		t.Fatalf("the VM on the isolated node: %+v", v)
	}
	// A migration onto it is refused too.
	pl.p.set(func(p *policy) { p.place, p.target = "n2", "n1" })
	other := pl.start(t, 1)[0]
	r, err = pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{other}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "isolated") {
		t.Fatalf("migrated onto an isolated node: %v %+v", err, r)
	}
	// Queries for placement leave it out unless asked.
	if got := pl.c.State().QueryLNMs(LNMQuery{Connected: true}); len(got) != 1 || got[0].Info.Name != "n2" {
		t.Fatalf("placement query offers %v", got)
	}
	if got := pl.c.State().QueryLNMs(LNMQuery{Connected: true, Mode: "isolated"}); len(got) != 1 || got[0].Info.Name != "n1" {
		t.Fatalf("mode query offers %v", got)
	}
	if _, err := pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeActive}); err != nil {
		t.Fatal(err)
	}
	if got := sv.get(); len(got) != 0 {
		t.Fatalf("saved modes after restore: %+v", got)
	}
	pl.p.set(func(p *policy) { p.place = "n1" })
	pl.start(t, 1)
	evs := pl.p.events(api.EvLNMMode)
	if len(evs) != 2 || evs[0].Detail["mode"] != "isolated" || evs[0].Detail["reason"] != "disk errors" || evs[1].Detail["mode"] != "active" {
		t.Fatalf("lnm_mode events: %+v", evs)
	}
	if _, err := pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "nope", Mode: api.ModeIsolated}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown node: %v", err)
	}
	if _, err := pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeMaintenance}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("maintenance by hand: %v", err)
	}
}

// TestDrainedNodeEntersMaintenance: a draining node whose last VM left is
// in maintenance by itself (saved, announced); an empty node drained goes
// there at once; a hibernated VM on it may not be restored there.
func TestDrainedNodeEntersMaintenance(t *testing.T) {
	pl, sv, _ := newLifecycle(t, nil)
	names := pl.start(t, 2)
	if _, err := pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeDraining, Reason: "kernel"}); err != nil {
		t.Fatal(err)
	}
	if m := pl.mode(t, "n1").Mode; m != api.ModeDraining {
		t.Fatalf("n1 is %s", m)
	}
	r, err := pl.c.Migrate(context.Background(), root, api.MigrateArgs{VMs: names[:1]})
	if err != nil || r.OK() != 1 {
		t.Fatalf("migrate: %v %+v", err, r)
	}
	if m := pl.mode(t, "n1").Mode; m != api.ModeDraining {
		t.Fatalf("n1 is %s with a VM left", m)
	}
	// The second one hibernates: it no longer takes the node's resources.
	if r, err := pl.c.OpOn(context.Background(), alice, api.OpArgs{Op: api.OpHibernate, VMs: names[1:]}); err != nil || r.OK() != 1 {
		t.Fatalf("hibernate: %v %+v", err, r)
	}
	l := pl.mode(t, "n1")
	if l.Mode != api.ModeMaintenance || !strings.Contains(l.Notice, "drained") {
		t.Fatalf("n1 after its last VM left: %+v", l)
	}
	if got := sv.get(); got["n1"].Mode != api.ModeMaintenance || got["n1"].Reason != "kernel" {
		t.Fatalf("saved: %+v", got)
	}
	r, err = pl.c.OpOn(context.Background(), alice, api.OpArgs{Op: api.OpRestore, VMs: names[1:]})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "maintenance") {
		t.Fatalf("restored a VM on a node in maintenance: %v %+v", err, r)
	}
	evs := pl.p.events(api.EvLNMMode)
	if len(evs) != 2 || evs[1].Detail["mode"] != "maintenance" || evs[1].Detail["previous"] != "draining" {
		t.Fatalf("events: %+v", evs)
	}
	// n2 is empty of running VMs? No: it runs the migrated one; drain an
	// empty node instead.
	pl3 := apitest.NewNode("n3")
	if _, err := pl.c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n3", CPUs: 4, MemMB: 4096}}, pl3, nil); err != nil {
		t.Fatal(err)
	}
	l, err = pl.c.SetLNMMode(context.Background(), root, api.SetLNMModeArgs{LNM: "n3", Mode: api.ModeDraining})
	if err != nil || l.Mode != api.ModeMaintenance {
		t.Fatalf("an empty node drained: %v %+v", err, l)
	}
}

// TestModesSurviveRestart: modes restored before the nodes register are
// theirs when they do; a draining node is judged empty only once it has
// registered its guests.
func TestModesSurviveRestart(t *testing.T) {
	c := New(Config{Domain: "usher.test"}, &policy{})
	defer c.Close()
	since := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c.ExpectLNMs([]api.NodeInfo{{Name: "n1"}, {Name: "n2"}})
	c.RestoreModes(map[string]ModeRecord{
		"n1":       {Mode: api.ModeDraining, Reason: "rack move", By: "root", Since: since},
		"n2":       {Mode: api.ModeIsolated, By: "root", Since: since},
		"n3":       {Mode: api.ModeIsolated, Reason: "not seen yet", Since: since},
		"BAD NAME": {Mode: api.ModeIsolated},
	})
	guest := api.Guest{Name: api.FullName("web1", "alice", "usher.test"), State: api.StateRunning, MemMB: 64, VCPUs: 1}
	if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n1", CPUs: 4, MemMB: 4096}}, apitest.NewNode("n1"), []api.Guest{guest}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n2", "n3"} {
		if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: n, CPUs: 4, MemMB: 4096}}, apitest.NewNode(n), nil); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]api.NodeMode{"n1": api.ModeDraining, "n2": api.ModeIsolated, "n3": api.ModeIsolated}
	for n, m := range want {
		l, _ := c.State().LNM(n)
		if l.Mode != m || !l.ModeSince.Equal(since) {
			t.Errorf("%s after the restart: %+v", n, l)
		}
	}
	if err := c.State().Check(); err != nil {
		t.Fatal(err)
	}
}

// TestFailoverNeedsConfirmedFence: a lost node's VMs are restarted
// elsewhere only after the fencing command confirmed it is off; a fence
// that fails or times out restarts nothing; the fenced node coming back
// has its stale copy destroyed, not adopted or listed as a conflict.
func TestFailoverNeedsConfirmedFence(t *testing.T) {
	var mu sync.Mutex
	outcome := "fail"
	fence := func(ctx context.Context, n api.NodeInfo) error {
		mu.Lock()
		o := outcome
		mu.Unlock()
		switch o {
		case "fail":
			return errors.New("ipmi: connection refused")
		case "hang":
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	set := func(o string) { mu.Lock(); outcome = o; mu.Unlock() }
	pl, _, gens := newLifecycle(t, fence)
	pl.p.set(func(p *policy) { p.data = api.StringMap{"ip": "10.0.0.7"} })
	name := pl.start(t, 1)[0]
	ctx := context.Background()
	if err := pl.c.Fence(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "connected") {
		t.Fatalf("fenced a connected node: %v", err)
	}
	pl.c.DetachLNM("n1", gens["n1"], "link lost")
	if v := pl.vm(t, name); v.State != api.StateLost {
		t.Fatalf("after the node failed: %+v", v)
	}
	noRestart := func(why string) {
		t.Helper()
		r, err := pl.c.Failover(ctx, root, api.MigrateArgs{VMs: []string{name}})
		if err != nil || r.OK() != 0 || len(r.Dropped) != 1 || !strings.Contains(r.Dropped[0].Reason, "not fenced") {
			t.Fatalf("%s: failover: %v %+v", why, err, r)
		}
		if v := pl.vm(t, name); v.State != api.StateLost || v.LNM != "n1" {
			t.Fatalf("%s: %+v", why, v)
		}
		if _, ok := pl.n2.Guest(name); ok {
			t.Fatalf("%s: the VM runs on n2", why)
		}
	}
	noRestart("never fenced")
	if err := pl.c.Fence(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("failed fence: %v", err)
	}
	noRestart("fence failed")
	set("hang")
	if err := pl.c.Fence(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("hung fence: %v", err)
	}
	noRestart("fence timed out")
	if pl.mode(t, "n1").Fenced {
		t.Fatal("n1 marked fenced")
	}
	set("ok")
	if err := pl.c.Fence(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if l := pl.mode(t, "n1"); !l.Fenced {
		t.Fatalf("n1 not fenced: %+v", l)
	}
	r, err := pl.c.Failover(ctx, root, api.MigrateArgs{VMs: []string{name}})
	if err != nil || r.OK() != 1 || r.Done[0].LNM != "n2" {
		t.Fatalf("failover: %v %+v", err, r)
	}
	// Restarted from its kept object: the same data.
	v := pl.vm(t, name)
	if v.LNM != "n2" || v.State != api.StateRunning || v.Data["ip"] != "10.0.0.7" {
		t.Fatalf("after failover: %+v", v)
	}
	if _, ok := pl.n2.Guest(name); !ok {
		t.Fatal("not running on n2")
	}
	// A second failover of the same VM does nothing: it is not lost.
	if r, err := pl.c.Failover(ctx, root, api.MigrateArgs{VMs: []string{name}}); err != nil || r.OK() != 0 {
		t.Fatalf("second failover: %v %+v", err, r)
	}
	// n1 comes back (its power-off undone by hand) still holding the guest.
	pl.n1ReturnsWithStaleCopy(t, name)
	if n := pl.c.State().Counts(); n.Conflicts != 0 || n.Unmanaged != 0 || n.VMs != 1 {
		t.Fatalf("counts: %+v", n)
	}
	if l := pl.mode(t, "n1"); l.Fenced || !strings.Contains(l.Notice, "1 stale") {
		t.Fatalf("n1 after it came back: %+v", l)
	}
}

// TestFailoverRestartFailsKeepsTheVM: a restart the target refuses leaves
// the VM lost on its fenced node, its object whole, to be tried again.
func TestFailoverRestartFailsKeepsTheVM(t *testing.T) {
	pl, _, gens := newLifecycle(t, func(context.Context, api.NodeInfo) error { return nil })
	name := pl.start(t, 1)[0]
	before := pl.vm(t, name)
	pl.c.DetachLNM("n1", gens["n1"], "power loss")
	if err := pl.c.Fence(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	pl.n2.OnStart = func(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
		var out api.LNMResults
		for _, v := range a.VMs {
			out.Results = append(out.Results, api.VMResult{Name: v.Name, Error: "no room"})
		}
		return out, nil
	}
	r, err := pl.c.Failover(context.Background(), root, api.MigrateArgs{VMs: []string{name}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "no room") {
		t.Fatalf("failover: %v %+v", err, r)
	}
	v := pl.vm(t, name)
	if v.State != api.StateLost || v.LNM != "n1" || v.MemMB != before.MemMB || !maps.Equal(v.Data, before.Data) {
		t.Fatalf("after a failed restart: %+v (before %+v)", v, before)
	}
	pl.n2.OnStart = nil
	if r, err := pl.c.Failover(context.Background(), root, api.MigrateArgs{VMs: []string{name}}); err != nil || r.OK() != 1 {
		t.Fatalf("second attempt: %v %+v", err, r)
	}
}

// TestMigratedAwayCopyDestroyedOnReturn: the source's link failed mid-way
// while the target already ran the VM (recorded there); the source comes
// back still holding a copy: that copy is destroyed, not a conflict.
func TestMigratedAwayCopyDestroyedOnReturn(t *testing.T) {
	pl, _, gens := newLifecycle(t, nil)
	name := pl.start(t, 1)[0]
	pl.n1.OnMigrate = func(_ context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
		for _, n := range a.Names { // the target has it; the source never let go
			g, _ := pl.n1.Guest(n)
			pl.n2.Put(g)
		}
		return api.LNMResults{}, apitest.ErrDown
	}
	r, err := pl.c.Migrate(context.Background(), alice, api.MigrateArgs{VMs: []string{name}, LNMs: []string{"n2"}})
	if err != nil || r.OK() != 1 || r.Done[0].LNM != "n2" {
		t.Fatalf("migrate: %v %+v", err, r)
	}
	pl.c.DetachLNM("n1", gens["n1"], "link lost")
	pl.n1ReturnsWithStaleCopy(t, name)
	if n := pl.c.State().Counts(); n.Conflicts != 0 || n.VMs != 1 {
		t.Fatalf("counts: %+v", n)
	}
}

// TestGuaranteedNeverOvercommitted: n1 offers 16 vCPUs on 4 host CPUs.
// Best-effort VMs may take all 16; guaranteed ones only what the host
// CPUs leave, whatever placement chose — at start, on migration and on
// failover — and what they take is given back when they go.
func TestGuaranteedNeverOvercommitted(t *testing.T) {
	p := &policy{place: "n1", target: "n1", qos: api.QoSGuaranteed}
	c := New(Config{Domain: "usher.test", OpTimeout: 10 * time.Second, StartTimeout: 10 * time.Second}, p)
	defer c.Close()
	n1, n2 := apitest.NewNode("n1"), apitest.NewNode("n2")
	n1.Peers["n2"], n2.Peers["n1"] = n2, n1
	ctx := context.Background()
	for _, n := range []*apitest.Node{n1, n2} {
		if _, err := c.AttachLNM(ctx, api.Hello{Node: api.NodeInfo{Name: n.Name, CPUs: 16, GuaranteedCPUs: 4, MemMB: 16384}}, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	start := func(n, vcpus int) *api.Result {
		t.Helper()
		r, err := c.Start(ctx, alice, api.StartArgs{Cluster: "g", Count: n, VCPUs: vcpus, MemMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := start(3, 1); r.OK() != 3 {
		t.Fatalf("three guaranteed 1-vCPU VMs on 4 host CPUs: %+v", r)
	}
	r := start(1, 2)
	if r.OK() != 0 || !strings.Contains(r.Done[0].Error, "cannot guarantee 2 vCPUs") {
		t.Fatalf("a fourth and fifth guaranteed vCPU: %+v", r)
	}
	l, _ := c.State().LNM("n1")
	if l.Status.FreeGuaranteedVCPUs != 1 || l.Status.FreeVCPUs != 13 {
		t.Fatalf("n1: %+v", l.Status)
	}
	// Best-effort VMs take the overcommitted rest, and then nothing more
	// can be guaranteed there.
	p.set(func(p *policy) { p.qos = "" })
	if r := start(1, 12); r.OK() != 1 {
		t.Fatalf("best-effort: %+v", r)
	}
	if l, _ := c.State().LNM("n1"); l.Status.FreeGuaranteedVCPUs != 1 || l.Status.FreeVCPUs != 1 {
		t.Fatalf("n1 after best-effort: %+v", l.Status)
	}
	// Placement queries for guaranteed VMs see what can be guaranteed.
	if got := c.State().QueryLNMs(LNMQuery{Connected: true, VCPUs: 2, Guaranteed: true}); len(got) != 1 || got[0].Info.Name != "n2" {
		t.Fatalf("guaranteed query: %v", got)
	}
	// A guaranteed VM migrating onto a node that cannot guarantee it is
	// refused; onto one that can, accepted.
	p.set(func(p *policy) { p.place, p.qos = "n2", api.QoSGuaranteed })
	big := start(1, 4).Done[0].Name
	r, err := c.Migrate(ctx, alice, api.MigrateArgs{VMs: []string{big}, LNMs: []string{"n1"}})
	if err != nil || r.OK() != 0 || !strings.Contains(r.Done[0].Error, "cannot guarantee") {
		t.Fatalf("migration onto a full node: %v %+v", err, r)
	}
	if err := c.State().Check(); err != nil {
		t.Fatal(err)
	}
	// Destroyed, they give back what they held.
	all, _ := c.List(ctx, alice, api.ListArgs{})
	var names []string
	for _, v := range all.VMs {
		names = append(names, v.Name)
	}
	if r, err := c.OpOn(ctx, alice, api.OpArgs{Op: api.OpDestroy, VMs: names}); err != nil || r.OK() != len(names) {
		t.Fatalf("destroy: %v %+v", err, r)
	}
	for _, n := range []string{"n1", "n2"} {
		if l, _ := c.State().LNM(n); l.Status.FreeGuaranteedVCPUs != 4 || l.Status.FreeVCPUs != 16 {
			t.Fatalf("%s after destroy: %+v", n, l.Status)
		}
	}
	if err := c.State().Check(); err != nil {
		t.Fatal(err)
	}
}

// TestReservationHoldsAndExpires: a reservation of 8 GiB and 8 vCPUs on n1
// for alice: what it holds is free to no one else (placement's view and the
// mechanism agree), alice's VMs under it fit in it and take from it, not
// from the rest; an extension by its owner goes through the authorize
// chain; at its end the hold is released and an event says so.
func TestReservationHoldsAndExpires(t *testing.T) {
	pl, _, _ := newLifecycle(t, nil)
	var saved []api.Reservation
	var mu sync.Mutex
	pl.c.cfg.SaveReservations = func(l []api.Reservation) error { mu.Lock(); saved = l; mu.Unlock(); return nil }
	ctx := context.Background()
	res := func(who api.Identity, a api.ReservationsArgs) (api.ReservationsReply, error) {
		return pl.c.Reservations(ctx, who, a)
	}
	if _, err := res(alice, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 8192, VCPUs: 8, LNMs: []string{"n1"}, For: "1h"}); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("a user created a reservation: %v", err)
	}
	if _, err := res(root, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 20000, LNMs: []string{"n1"}, For: "1h"}); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a reservation larger than the node: %v", err)
	}
	rep, err := res(root, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 8192, VCPUs: 8, LNMs: []string{"n1"}, For: "1h"})
	if err != nil || len(rep.Reservations) != 1 || rep.Reservations[0].State != api.ResActive {
		t.Fatalf("create: %v %+v", err, rep)
	}
	r := rep.Reservations[0]
	if l := pl.mode(t, "n1"); l.Status.FreeMemMB != 16384-8192 || l.Status.FreeVCPUs != 16-8 {
		t.Fatalf("n1 while reserved: %+v", l.Status)
	}
	mu.Lock()
	if len(saved) != 1 || saved[0].ID != r.ID {
		t.Fatalf("saved: %+v", saved)
	}
	mu.Unlock()
	// Someone else's VMs fit only in what is not held.
	bob := api.Identity{User: "bob"}
	if rr, err := pl.c.Start(ctx, bob, api.StartArgs{Cluster: "b", Count: 1, MemMB: 8192, VCPUs: 1}); err != nil || rr.OK() != 1 {
		t.Fatalf("bob's VM in the free half: %v %+v", err, rr)
	}
	rr, err := pl.c.Start(ctx, bob, api.StartArgs{Cluster: "b", Count: 1, MemMB: 1024, VCPUs: 1})
	if err != nil || rr.OK() != 0 || !strings.Contains(rr.Done[0].Error, "reserved") {
		t.Fatalf("bob's VM in the held half: %v %+v", err, rr)
	}
	// alice's VMs under it take from it.
	pl.p.set(func(p *policy) { p.qos = "" })
	withRes := func(id string) {
		pl.p.set(func(p *policy) { p.data = api.StringMap{api.DataReservation: id} })
	}
	withRes(r.ID)
	rr, err = pl.c.Start(ctx, alice, api.StartArgs{Cluster: "a", Count: 2, MemMB: 4096, VCPUs: 4})
	if err != nil || rr.OK() != 2 {
		t.Fatalf("alice under her reservation: %v %+v", err, rr)
	}
	if v := pl.vm(t, rr.Done[0].Name); v.Data[api.DataReservationEnd] != r.End.Format(time.RFC3339) {
		t.Fatalf("VM data: %+v", v.Data)
	}
	rr, err = pl.c.Start(ctx, alice, api.StartArgs{Cluster: "a", Count: 1, MemMB: 128, VCPUs: 1})
	if err != nil || rr.OK() != 0 || !strings.Contains(rr.Done[0].Error, "left on n1") {
		t.Fatalf("beyond the reservation: %v %+v", err, rr)
	}
	if got, _ := pl.c.State().Reservation(r.ID); len(got.VMs) != 2 || got.Used["n1"].MemMB != 8192 {
		t.Fatalf("reservation in use: %+v", got)
	}
	// bob may not use it.
	rr, err = pl.c.Start(ctx, bob, api.StartArgs{Cluster: "b", Count: 1, MemMB: 128, VCPUs: 1})
	if err != nil || rr.OK() != 0 || !strings.Contains(rr.Done[0].Error, "not held for") {
		t.Fatalf("bob under alice's reservation: %v %+v", err, rr)
	}
	if err := pl.c.State().Check(); err != nil {
		t.Fatal(err)
	}
	// Extending: the owner may; someone else finds nothing.
	if _, err := res(bob, api.ReservationsArgs{Action: api.ResExtend, ID: r.ID, For: "1h"}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("bob extended: %v", err)
	}
	rep, err = res(alice, api.ReservationsArgs{Action: api.ResExtend, ID: r.ID, For: "1h"})
	if err != nil || !rep.Reservations[0].End.Equal(r.End.Add(time.Hour)) {
		t.Fatalf("extend: %v %+v", err, rep)
	}
	// Cancelled (as ending): the hold goes, alice's VMs stay (the policy
	// decides), an event says so.
	rep, err = res(alice, api.ReservationsArgs{Action: api.ResCancel, ID: r.ID})
	if err != nil || rep.Reservations[0].State != api.ResEnded {
		t.Fatalf("cancel: %v %+v", err, rep)
	}
	if l := pl.mode(t, "n1"); l.Status.FreeMemMB != 16384-8192-8192 || l.Status.FreeVCPUs != 16-1-8 {
		t.Fatalf("n1 after the end: %+v", l.Status)
	}
	var states []string
	for _, e := range pl.p.events(api.EvReservation) {
		states = append(states, e.Detail["state"])
	}
	if strings.Join(states, ",") != "created,active,extended,ended" {
		t.Fatalf("reservation events: %v", states)
	}
	// A short one ends by the clock.
	pl.p.set(func(p *policy) { p.data = nil })
	rep, err = res(root, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 1024, LNMs: []string{"n2"}, End: time.Now().Add(300 * time.Millisecond).UTC().Format(time.RFC3339Nano)})
	if err != nil {
		t.Fatal(err)
	}
	short := rep.Reservations[0].ID
	waitfor.True(t, 30*time.Second, "the short reservation to end", func() bool {
		got, _ := pl.c.State().Reservation(short)
		return got.State == api.ResEnded
	})
	if l := pl.mode(t, "n2"); l.Status.FreeMemMB != 16384 {
		t.Fatalf("n2 after the clock ended its reservation: %+v", l.Status)
	}
}
