//go:build libvirt

package usher

// Real hypervisors: a controller and two LNMs, one per libvirt host (two
// libvirtd instances on this machine, started by the project's harness),
// QEMU guests that really boot, every Table 3 operation checked through
// libvirt itself, live migration, and domains changed behind Usher's back.
// Run with `make test-libvirt` (part of `make test`).

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/site"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/nodemgr"
	lv "github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/libvirt/libvirttest"
)

type lvSite struct {
	*site.Site
	h       *libvirttest.Harness
	drivers map[string]*lv.Driver
	host    map[string]int // LNM name → harness host number
}

func startLibvirtSite(t testing.TB) *lvSite {
	t.Helper()
	h := libvirttest.StartHarness(t)
	ls := &lvSite{h: h, drivers: map[string]*lv.Driver{}, host: map[string]int{"host1": 1, "host2": 2}}
	hooks := coretest.New(map[string]string{"alice": "alice-pw", "root": "root-pw"}, "root")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := site.Start(ctx, site.Options{Dir: t.TempDir(), Hooks: hooks,
		Bind:           func(c *core.Controller) { hooks.View = c.State() },
		ReportInterval: 500 * time.Millisecond, ScanInterval: time.Second, KeepAlive: time.Second,
		Core: &core.Config{DefaultMemMB: 128, OwnerOnly: true},
		NewDriver: func(name string) (nodemgr.Driver, string, error) {
			d, err := lv.New(context.Background(), h.Options(ls.host[name], name))
			if err != nil {
				return nil, "", err
			}
			ls.drivers[name] = d
			return d, "", nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ls.Site = s
	for _, n := range []string{"host1", "host2"} {
		if err := s.AddLNM(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WaitLNMs(ctx, 2); err != nil {
		t.Fatal(err)
	}
	return ls
}

func TestLibvirtEndToEnd(t *testing.T) {
	ls := startLibvirtSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	rec := record(alice)

	res, err := alice.Start(ctx, api.StartArgs{Cluster: "lv", Count: 4, MemMB: 128})
	if err != nil || res.OK() != 4 {
		t.Fatalf("start: %v %+v", err, res)
	}
	on := map[string]string{}
	for _, d := range res.Done {
		on[d.Name] = d.LNM
		ls.h.WaitDomstate(t, ls.host[d.LNM], d.Name, "running")
		libvirttest.WaitConsole(t, ls.drivers[d.LNM].ConsolePath(d.Name), 1, 0)
	}
	if len(map[string]bool{on[res.Done[0].Name]: true, on[res.Done[1].Name]: true}) != 2 {
		t.Fatalf("placement used one host only: %v", on)
	}
	vm := func(i int) (string, int, *lv.Driver) {
		n := res.Done[i].Name
		return n, ls.host[on[n]], ls.drivers[on[n]]
	}
	op := func(o api.Op, name string, args map[string]string) {
		t.Helper()
		r, err := alice.OpOnNames(ctx, o, []string{name}, args)
		if err != nil || r.OK() != 1 {
			t.Fatalf("%s %s: %v %+v", o, name, err, r)
		}
	}

	// pause / resume
	name, host, drv := vm(0)
	op(api.OpPause, name, nil)
	ls.h.WaitDomstate(t, host, name, "paused")
	op(api.OpResume, name, nil)
	ls.h.WaitDomstate(t, host, name, "running")

	// hibernate / restore: the domain leaves libvirt for a state file and
	// comes back with its clock still counting
	before := libvirttest.WaitConsole(t, drv.ConsolePath(name), 1, 0)
	op(api.OpHibernate, name, nil)
	ls.h.WaitDomstate(t, host, name, "")
	if _, err := os.Stat(drv.SavePath(name)); err != nil {
		t.Fatalf("no save file: %v", err)
	}
	op(api.OpRestore, name, nil)
	ls.h.WaitDomstate(t, host, name, "running")
	libvirttest.WaitConsole(t, drv.ConsolePath(name), 1, before)

	// reboot (forced: the test guest ignores ACPI): a second boot
	name, host, drv = vm(1)
	if r, err := alice.Op(ctx, api.OpArgs{Op: api.OpReboot, VMs: []string{name}, Force: true}); err != nil || r.OK() != 1 {
		t.Fatalf("reboot --force %s: %v %+v", name, err, r)
	}
	libvirttest.WaitConsole(t, drv.ConsolePath(name), 2, 0)

	// cycle: destroyed and created again under a new domain id
	idBefore, _ := ls.h.Virsh(host, "domid", name)
	op(api.OpCycle, name, nil)
	ls.h.WaitDomstate(t, host, name, "running")
	if idAfter, _ := ls.h.Virsh(host, "domid", name); idAfter == idBefore {
		t.Fatalf("cycle kept domain id %s", idAfter)
	}

	// destroy
	name, host, _ = vm(2)
	op(api.OpDestroy, name, nil)
	ls.h.WaitDomstate(t, host, name, "")

	// live migration host1 → host2: the guest's counter carries on there
	mig := res.Done[0].Name
	if on[mig] != "host1" {
		mig = res.Done[1].Name
	}
	if on[mig] != "host1" {
		t.Fatalf("no running VM on host1: %v", on)
	}
	path := ls.drivers["host1"].ConsolePath(mig)
	tick := libvirttest.WaitConsole(t, path, 1, 0)
	boots, _, _ := libvirttest.Console(path)
	mr, err := alice.Migrate(ctx, mig, "host2")
	if err != nil || mr.OK() != 1 {
		t.Fatalf("migrate: %v %+v", err, mr)
	}
	ls.h.WaitDomstate(t, 2, mig, "running")
	if st, err := ls.h.Domstate(1, mig); err != nil || st != "" {
		t.Fatalf("migrated VM still %q on host1 (%v)", st, err)
	}
	libvirttest.WaitConsole(t, path, boots, tick+1)
	if b, _, _ := libvirttest.Console(path); b != boots {
		t.Fatalf("guest rebooted during migration (%d boots, was %d)", b, boots)
	}
	rec.waitFor(t, "migration pushed", func(ev api.Event) bool {
		return ev.Type == api.EvMigrateComplete && ev.OK && ev.VM.Name == mig && ev.VM.LNM == "host2"
	})

	// a domain created with virsh outside Usher shows up as unmanaged
	root, err := ls.Client(ctx, "root", "root-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	foreign := "outsider"
	xml := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd><cmdline>console=ttyS0 quiet</cmdline></os>
<devices><serial type='null'/></devices></domain>`, foreign, ls.h.Kernel, ls.h.Initrd)
	xf := ls.Opts.Dir + "/outsider.xml"
	os.WriteFile(xf, []byte(xml), 0o644)
	if _, err := ls.h.Virsh(1, "create", xf); err != nil {
		t.Fatal(err)
	}
	waitList(t, root, func(lr *api.ListReply) bool {
		for _, u := range lr.Unmanaged {
			if u.Name == foreign && u.LNM == "host1" {
				return true
			}
		}
		return false
	})
	ls.h.Virsh(1, "destroy", foreign)

	// one destroyed with virsh behind Usher's back shows up as missing
	victim := res.Done[3].Name
	if on[victim] == "" {
		t.Fatal("no victim")
	}
	if _, err := ls.h.Virsh(ls.host[on[victim]], "destroy", victim); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "missing "+victim, func(ev api.Event) bool { return ev.Type == api.EvVMMissing && ev.VM.Name == victim })
}

func waitList(t testing.TB, c interface {
	List(context.Context, api.ListArgs) (*api.ListReply, error)
}, ok func(*api.ListReply) bool) {
	t.Helper()
	waitfor.Error(t, 60*time.Second, "the controller's lists", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lr, err := c.List(ctx, api.ListArgs{All: true, Lists: true})
		if err != nil {
			return err
		}
		if !ok(lr) {
			return fmt.Errorf("they do not match yet: %+v", lr)
		}
		return nil
	})
}

// BenchmarkTenGuests starts ten guests through Usher (client → controller →
// LNMs → libvirt, both hosts) and ten created directly with go-libvirt one
// after another, and reports both times and their ratio.
func BenchmarkTenGuests(b *testing.B) {
	ls := startLibvirtSite(b)
	ctx := context.Background()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		b.Fatal(err)
	}
	defer alice.Close()
	direct, err := lv.New(ctx, ls.h.Options(1, "direct"))
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	var usherT, directT time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := alice.Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("b%d", i), Count: 10, MemMB: 128})
		if err != nil || res.OK() != 10 {
			b.Fatalf("usher start: %v %+v", err, res)
		}
		usherT += time.Since(t0)
		names, _ := alice.Expand(fmt.Sprintf("@b%d", i))
		alice.OpOnNames(ctx, api.OpDestroy, names, nil)

		t0 = time.Now()
		for j := 0; j < 10; j++ {
			if err := direct.Start(ctx, nodemgr.Spec{Name: fmt.Sprintf("direct%d-%d", i, j), MemMB: 128, VCPUs: 1}); err != nil {
				b.Fatal(err)
			}
		}
		directT += time.Since(t0)
		for j := 0; j < 10; j++ {
			direct.Op(ctx, fmt.Sprintf("direct%d-%d", i, j), api.OpDestroy, nodemgr.OpOptions{})
		}
	}
	b.ReportMetric(usherT.Seconds()/float64(b.N), "usher_s/10guests")
	b.ReportMetric(directT.Seconds()/float64(b.N), "direct_s/10guests")
	b.ReportMetric(usherT.Seconds()/directT.Seconds(), "ratio")
}

// Restarting libvirtd under a libvirt LNM loses and duplicates nothing: the
// QEMU processes outlive the daemon, the driver reconnects with a fresh
// client, re-subscribes and re-lists, and Usher's view never changes.
func TestLibvirtDaemonRestart(t *testing.T) {
	ls := startLibvirtSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	res, err := alice.Start(ctx, api.StartArgs{Cluster: "rs", Count: 2, MemMB: 128, LNMs: []string{"host1"}})
	if err != nil || res.OK() != 2 {
		t.Fatalf("start: %v %+v", err, res)
	}
	for _, d := range res.Done {
		if d.LNM != "host1" {
			t.Fatalf("%s placed on %s", d.Name, d.LNM)
		}
		ls.h.WaitDomstate(t, 1, d.Name, "running")
	}
	rec := record(alice)
	if err := ls.h.KillHost(1); err != nil {
		t.Fatal(err)
	}
	if err := ls.h.StartHost(1); err != nil {
		t.Fatal(err)
	}
	// Usher acts on the VMs again once the driver is back.
	name := res.Done[0].Name
	waitfor.Error(t, 60*time.Second, "a pause after the libvirtd restart", func() error {
		r, err := alice.OpOnNames(ctx, api.OpPause, []string{name}, nil)
		if err == nil && r.OK() != 1 {
			err = fmt.Errorf("result %+v", r)
		}
		return err
	})
	ls.h.WaitDomstate(t, 1, name, "paused")
	ls.h.WaitDomstate(t, 1, res.Done[1].Name, "running")
	out, err := ls.h.Virsh(1, "list", "--all", "--name")
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, l := range strings.Fields(out) {
		if strings.HasPrefix(l, "rs") {
			count++
		}
	}
	if count != 2 {
		t.Fatalf("host1 holds %d rs domains after the restart:\n%s", count, out)
	}
	lr, err := alice.List(ctx, api.ListArgs{Lists: true})
	if err != nil || len(lr.VMs) != 2 || len(lr.Lost)+len(lr.Missing) != 0 {
		t.Fatalf("controller view after the restart: %v %+v", err, lr)
	}
	for _, ev := range rec.all() {
		if ev.Type == api.EvVMLost || ev.Type == api.EvVMMissing {
			t.Fatalf("%s reported during a libvirtd restart: %+v", ev.Type, ev.VM)
		}
	}
}
