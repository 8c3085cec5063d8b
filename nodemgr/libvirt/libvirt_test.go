//go:build libvirt

package libvirt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/libvirt/libvirttest"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/nodemgr"
)

var H *libvirttest.Harness

func TestMain(m *testing.M) {
	start := time.Now()
	h, err := libvirttest.SetupHarness()
	if errors.Is(err, libvirttest.ErrHarnessSkip) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "libvirt harness up in %v (run dir %s)\n", time.Since(start).Round(time.Millisecond), h.RunDir)
	H = h
	code := m.Run()
	if err := h.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// newDriver starts a driver on host n and records its events.
func newDriver(t *testing.T, n int, node string, tweak ...func(*libvirt.Options)) (*libvirt.Driver, *recorder) {
	t.Helper()
	o := H.Options(n, node)
	for _, f := range tweak {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := libvirt.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	r := record(d)
	t.Cleanup(func() {
		d.Close()
		<-r.done
	})
	return d, r
}

// destroyLater removes a domain from both hosts when the test ends.
func destroyLater(t *testing.T, name string) {
	t.Cleanup(func() {
		for _, n := range []int{1, 2} {
			H.Virsh(n, "destroy", name)
		}
	})
}

type recorder struct {
	mu     sync.Mutex
	evs    []nodemgr.GuestEvent
	notify chan struct{}
	done   chan struct{}
}

func record(d *libvirt.Driver) *recorder {
	r := &recorder{notify: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ev := range d.Events() {
			r.mu.Lock()
			r.evs = append(r.evs, ev)
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
		}
	}()
	return r
}

// wait returns the first event at index >= from for name that matches.
func (r *recorder) wait(t *testing.T, from int, name string, what string, match func(nodemgr.GuestEvent) bool) int {
	t.Helper()
	deadline := time.After(libvirttest.BootWait)
	for {
		r.mu.Lock()
		for i := from; i < len(r.evs); i++ {
			if r.evs[i].Name == name && match(r.evs[i]) {
				r.mu.Unlock()
				return i + 1
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no %s event for %s; events: %+v", what, name, r.evs)
		}
	}
}

func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

func isState(s api.VMState) func(nodemgr.GuestEvent) bool {
	return func(ev nodemgr.GuestEvent) bool { return !ev.Gone && ev.State == s }
}

func isGone(ev nodemgr.GuestEvent) bool { return ev.Gone }

// domstate asks libvirt directly ("" if the host has no such domain).
func domstate(t *testing.T, n int, name string) string {
	t.Helper()
	st, err := H.Domstate(n, name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func listed(t *testing.T, d *libvirt.Driver, name string) (nodemgr.GuestInfo, bool) {
	t.Helper()
	doms, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, di := range doms {
		if di.Name == name {
			return di, true
		}
	}
	return nodemgr.GuestInfo{}, false
}

func wantListed(t *testing.T, d *libvirt.Driver, name string, st api.VMState) {
	t.Helper()
	di, ok := listed(t, d, name)
	if !ok || di.State != st {
		t.Fatalf("List: %s = %+v (found %v), want state %s", name, di, ok, st)
	}
}

func domID(t *testing.T, n int, name string) string {
	t.Helper()
	out, err := H.Virsh(n, "domid", name)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNodeInfo(t *testing.T) {
	d1, _ := newDriver(t, 1, "n1")
	d2, _ := newDriver(t, 2, "n2")
	ctx := context.Background()
	i1, err := d1.NodeInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i2, err := d2.NodeInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i1.CPUs <= 0 || i1.MemMB <= 0 || i1.Driver != "libvirt" || i1.Address != H.URI1 {
		t.Fatalf("node info: %+v", i1)
	}
	if !strings.Contains(i1.Model, "host-uuid=aaaaaaaa-") || !strings.Contains(i2.Model, "host-uuid=11111111-") {
		t.Fatalf("host UUIDs not reported: %q / %q", i1.Model, i2.Model)
	}
	t.Logf("host1: %+v", i1)
}

func TestLifecycle(t *testing.T) {
	d, r := newDriver(t, 1, "n1")
	ctx := context.Background()
	const name = "lc1.alice.test"
	destroyLater(t, name)
	cons := d.ConsolePath(name)
	t0 := time.Now()
	if err := d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Start returned in %v", time.Since(t0))
	if got := domstate(t, 1, name); got != "running" {
		t.Fatalf("after Start libvirt says %q", got)
	}
	libvirttest.WaitConsole(t, cons, 1, 0)
	if _, _, text := libvirttest.Console(cons); !strings.Contains(text, "USHER-GUEST-UP "+name) {
		t.Fatalf("console lacks hostname marker: %q", text[max(0, len(text)-300):])
	}
	t.Logf("guest up (console) %v after Start", time.Since(t0))
	if err := d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); !errors.Is(err, libvirt.ErrExists) {
		t.Fatalf("second Start: %v, want libvirt.ErrExists", err)
	}
	if err := d.Start(ctx, nodemgr.Spec{Name: "huge.alice.test", MemMB: 1 << 30, VCPUs: 1}); !errors.Is(err, libvirt.ErrInsufficientCapacity) {
		t.Fatalf("huge Start: %v, want libvirt.ErrInsufficientCapacity", err)
	}
	wantListed(t, d, name, api.StateRunning)

	// Stats: two samples with the guest ticking in between.
	if _, err := d.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	_, last, _ := libvirttest.Console(cons)
	libvirttest.WaitConsole(t, cons, 1, last+1)
	st, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Guests[name]
	if s.CPU <= 0 || s.MemBytes <= 0 {
		t.Fatalf("stats for %s: %+v", name, s)
	}
	t.Logf("stats: %+v", s)

	op := func(o api.Op, opts nodemgr.OpOptions) {
		t.Helper()
		t0 := time.Now()
		if err := d.Op(ctx, name, o, opts); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		t.Logf("%s took %v", o, time.Since(t0).Round(time.Millisecond))
	}
	force := nodemgr.OpOptions{Force: true}

	m := r.mark()
	op(api.OpPause, nodemgr.OpOptions{})
	H.WaitDomstate(t, 1, name, "paused")
	m = r.wait(t, m, name, "paused", isState(api.StatePaused))
	wantListed(t, d, name, api.StatePaused)
	if err := d.Op(ctx, name, api.OpRestore, nodemgr.OpOptions{}); !errors.Is(err, libvirt.ErrInvalidTransition) {
		t.Fatalf("restore of a paused domain: %v", err)
	}

	op(api.OpResume, nodemgr.OpOptions{})
	H.WaitDomstate(t, 1, name, "running")
	m = r.wait(t, m, name, "running", isState(api.StateRunning))

	id := domID(t, 1, name)
	op(api.OpReboot, force)
	libvirttest.WaitConsole(t, cons, 2, -1) // a second boot marker
	if got := domID(t, 1, name); got != id {
		t.Fatalf("reboot changed the domain id %s -> %s", id, got)
	}

	_, before, _ := libvirttest.Console(cons)
	op(api.OpHibernate, nodemgr.OpOptions{})
	if got := domstate(t, 1, name); got != "" {
		t.Fatalf("after hibernate libvirt still has the domain: %q", got)
	}
	if fi, err := os.Stat(d.SavePath(name)); err != nil || fi.Size() < 1<<20 {
		t.Fatalf("save file: %v %v", fi, err)
	}
	m = r.wait(t, m, name, "hibernated", isState(api.StateHibernated))
	wantListed(t, d, name, api.StateHibernated)
	if err := d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); !errors.Is(err, libvirt.ErrExists) {
		t.Fatalf("Start over a hibernated VM: %v", err)
	}

	op(api.OpRestore, nodemgr.OpOptions{})
	H.WaitDomstate(t, 1, name, "running")
	m = r.wait(t, m, name, "running", isState(api.StateRunning))
	if _, err := os.Stat(d.SavePath(name)); !os.IsNotExist(err) {
		t.Fatalf("save file left after restore: %v", err)
	}
	if ups, _, _ := libvirttest.Console(cons); ups != 2 {
		t.Fatalf("restore rebooted the guest (%d boot markers)", ups)
	}
	libvirttest.WaitConsole(t, cons, 2, before) // the same boot carries on counting

	id = domID(t, 1, name)
	op(api.OpCycle, nodemgr.OpOptions{})
	H.WaitDomstate(t, 1, name, "running")
	if got := domID(t, 1, name); got == id {
		t.Fatalf("cycle kept domain id %s", id)
	}
	libvirttest.WaitConsole(t, cons, 3, -1)

	op(api.OpShutdown, force) // the busybox guest ignores ACPI: forced after ShutdownTimeout
	if got := domstate(t, 1, name); got != "" {
		t.Fatalf("after shutdown libvirt still has the domain: %q", got)
	}
	m = r.wait(t, m, name, "shutoff", isState(api.StateShutoff))
	wantListed(t, d, name, api.StateShutoff)

	op(api.OpCycle, nodemgr.OpOptions{}) // from shutoff: boots again
	H.WaitDomstate(t, 1, name, "running")
	m = r.wait(t, m, name, "running", isState(api.StateRunning))
	libvirttest.WaitConsole(t, cons, 4, -1)

	op(api.OpDestroy, nodemgr.OpOptions{})
	if got := domstate(t, 1, name); got != "" {
		t.Fatalf("after destroy libvirt still has the domain: %q", got)
	}
	r.wait(t, m, name, "gone", isGone)
	if di, ok := listed(t, d, name); ok {
		t.Fatalf("destroyed domain still listed: %+v", di)
	}
	if err := d.Op(ctx, name, api.OpPause, nodemgr.OpOptions{}); !errors.Is(err, libvirt.ErrNoSuchDomain) {
		t.Fatalf("pause after destroy: %v", err)
	}
}

func TestShutdownWithoutForceFails(t *testing.T) {
	d, _ := newDriver(t, 1, "n1", func(o *libvirt.Options) { o.ShutdownTimeout = time.Second })
	ctx := context.Background()
	const name = "sd1.alice.test"
	destroyLater(t, name)
	if err := d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	libvirttest.WaitConsole(t, d.ConsolePath(name), 1, -1)
	err := d.Op(ctx, name, api.OpShutdown, nodemgr.OpOptions{})
	if err == nil || !strings.Contains(err.Error(), "forced shutdown") {
		t.Fatalf("graceful shutdown of an ACPI-deaf guest: %v", err)
	}
	if got := domstate(t, 1, name); got != "running" {
		t.Fatalf("after a failed shutdown libvirt says %q", got)
	}
	if err := d.Op(ctx, name, api.OpDestroy, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestMigrate(t *testing.T) {
	d1, r1 := newDriver(t, 1, "n1")
	d2, r2 := newDriver(t, 2, "n2")
	ctx := context.Background()
	const name = "mig1.alice.test"
	destroyLater(t, name)
	if err := d1.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	cons := d1.ConsolePath(name)
	libvirttest.WaitConsole(t, cons, 1, 1)

	// A failed migration leaves the domain running at the source.
	err := d1.Migrate(ctx, name, "nowhere", "qemu+unix:///system?socket="+H.RunDir+"/no-such-sock")
	if err == nil {
		t.Fatal("migration to a missing libvirtd succeeded")
	}
	t.Logf("failed migration: %v", err)
	if got := domstate(t, 1, name); got != "running" {
		t.Fatalf("after a failed migration the source says %q", got)
	}

	info2, err := d2.NodeInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m1, m2 := r1.mark(), r2.mark()
	_, before, _ := libvirttest.Console(cons)
	t0 := time.Now()
	if err := d1.Migrate(ctx, name, "n2", info2.Address); err != nil {
		t.Fatal(err)
	}
	t.Logf("migration host1 -> host2 took %v (tick %d at start)", time.Since(t0).Round(time.Millisecond), before)
	if got := domstate(t, 2, name); got != "running" {
		t.Fatalf("destination says %q", got)
	}
	if got := domstate(t, 1, name); got != "" {
		t.Fatalf("source still has the domain: %q", got)
	}
	after := libvirttest.WaitConsole(t, cons, 1, before+1)
	if ups, _, _ := libvirttest.Console(cons); ups != 1 {
		t.Fatalf("guest rebooted during migration (%d boot markers)", ups)
	}
	// host2's QEMU is the writer now: host1 has no QEMU for it.
	if got := domstate(t, 1, name); got != "" {
		t.Fatalf("source has the domain again: %q", got)
	}
	t.Logf("counter carried on at host2: tick %d -> %d", before, after)
	r1.wait(t, m1, name, "gone (migrated)", func(ev nodemgr.GuestEvent) bool { return ev.Gone && strings.Contains(ev.Reason, "migrated") })
	r2.wait(t, m2, name, "running (migrated in)", isState(api.StateRunning))
	wantListed(t, d2, name, api.StateRunning)
	if _, ok := listed(t, d1, name); ok {
		t.Fatal("source still lists the domain")
	}

	// And back: host2's libvirtd reaches host1's socket (shared /tmp).
	info1, err := d1.NodeInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, before, _ = libvirttest.Console(cons)
	t0 = time.Now()
	if err := d2.Migrate(ctx, name, "n1", info1.Address); err != nil {
		t.Fatal(err)
	}
	t.Logf("migration host2 -> host1 took %v", time.Since(t0).Round(time.Millisecond))
	H.WaitDomstate(t, 1, name, "running")
	libvirttest.WaitConsole(t, cons, 1, before+1)
	// Ops work on a domain that arrived by migration (cycle takes libvirt's XML).
	id := domID(t, 1, name)
	if err := d1.Op(ctx, name, api.OpCycle, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
	H.WaitDomstate(t, 1, name, "running")
	if got := domID(t, 1, name); got == id {
		t.Fatalf("cycle kept domain id %s", id)
	}
	libvirttest.WaitConsole(t, cons, 2, -1)
	if err := d1.Op(ctx, name, api.OpDestroy, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestForeignDomains(t *testing.T) {
	d, r := newDriver(t, 1, "n1")
	const name = "foreign1"
	destroyLater(t, name)
	def, err := d.DomainDef(nodemgr.Spec{Name: name, MemMB: 96, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Its console somewhere the driver does not own.
	def.Devices.Serials[0].Log.File = H.RunDir + "/foreign1.console"
	x, err := def.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f := H.RunDir + "/foreign1.xml"
	if err := os.WriteFile(f, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	m := r.mark()
	if _, err := H.Virsh(1, "create", f); err != nil {
		t.Fatal(err)
	}
	m = r.wait(t, m, name, "running", isState(api.StateRunning))
	di, ok := listed(t, d, name)
	if !ok || di.State != api.StateRunning || di.MemMB != 96 || di.VCPUs != 1 {
		t.Fatalf("foreign domain listed as %+v (%v)", di, ok)
	}
	if _, err := H.Virsh(1, "destroy", name); err != nil {
		t.Fatal(err)
	}
	r.wait(t, m, name, "gone", isGone)
	if _, ok := listed(t, d, name); ok {
		t.Fatal("destroyed foreign domain still listed")
	}
}

func TestReconnect(t *testing.T) {
	d, r := newDriver(t, 1, "n1")
	ctx := context.Background()
	const name = "rc1.alice.test"
	destroyLater(t, name)
	if err := d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	libvirttest.WaitConsole(t, d.ConsolePath(name), 1, -1)
	before := d.Connects()
	pid, _ := H.Pid(1)
	if err := H.KillHost(1); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := H.StartHost(1); err != nil {
		t.Fatal(err)
	}
	npid, _ := H.Pid(1)
	t.Logf("libvirtd %d killed, %d answering after %v", pid, npid, time.Since(t0).Round(time.Millisecond))
	waitfor.Error(t, time.Minute, "the driver to reconnect", func() error {
		if d.Connects() <= before {
			return fmt.Errorf("connects still %d", d.Connects())
		}
		return nil
	})
	t.Logf("driver reconnected %v after restart", time.Since(t0).Round(time.Millisecond))
	wantListed(t, d, name, api.StateRunning)
	if got := domstate(t, 1, name); got != "running" {
		t.Fatalf("libvirt lost the guest across its restart: %q", got)
	}
	// Events flow again, from a change made behind the driver's back...
	m := r.mark()
	if _, err := H.Virsh(1, "suspend", name); err != nil {
		t.Fatal(err)
	}
	m = r.wait(t, m, name, "paused", isState(api.StatePaused))
	// ...and from the driver's own operations.
	if err := d.Op(ctx, name, api.OpResume, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
	m = r.wait(t, m, name, "running", isState(api.StateRunning))

	// A change made while the driver is disconnected is found on reconnect.
	if err := H.KillHost(1); err != nil {
		t.Fatal(err)
	}
	before = d.Connects()
	if err := H.StartHost(1); err != nil {
		t.Fatal(err)
	}
	if _, err := H.Virsh(1, "destroy", name); err != nil {
		t.Fatal(err)
	}
	r.wait(t, m, name, "gone", isGone)
	if d.Connects() <= before {
		t.Logf("note: the destroy event arrived live (connects %d)", d.Connects())
	}
}
