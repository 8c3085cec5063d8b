package libvirt

import (
	"log/slog"
	"strings"
	"testing"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/nodemgr"
)

// Tests that need no libvirtd (they run in the ordinary go test ./...).

func testDriver(t *testing.T) *Driver {
	return &Driver{o: Options{StateDir: t.TempDir(), DomainType: "qemu", Machine: "pc", Kernel: "/k", Cmdline: "console=ttyS0 h={name}", MigrationHost: "127.0.0.1"},
		log: slog.New(slog.DiscardHandler), skip: map[string]int{}}
}

func TestDomainXML(t *testing.T) {
	d := testDriver(t)
	x, err := d.domainXML(nodemgr.Spec{Name: "a&b", MemMB: 256, VCPUs: 2, Data: map[string]string{"initrd": "/i"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<domain type='qemu'>", "<name>a&amp;b</name>", "<memory unit='MiB'>256</memory>", "<vcpu>2</vcpu>",
		"<kernel>/k</kernel>", "<initrd>/i</initrd>", "<cmdline>console=ttyS0 h=a&amp;b</cmdline>", "append='on'"} {
		if !strings.Contains(x, want) {
			t.Errorf("XML lacks %q:\n%s", want, x)
		}
	}
	if m, v := xmlSize([]byte(x)); m != 256 || v != 2 {
		t.Errorf("xmlSize = %d MiB, %d vCPUs", m, v)
	}
	d.o.Kernel = ""
	if _, err := d.domainXML(nodemgr.Spec{Name: "x"}); err == nil {
		t.Error("no kernel and no image accepted")
	}
	x, _ = d.domainXML(nodemgr.Spec{Name: "x", Args: map[string]string{"image": "/d.qcow2"}})
	if !strings.Contains(x, "type='qcow2'") || !strings.Contains(x, "<boot dev='hd'/>") {
		t.Errorf("disk boot XML:\n%s", x)
	}
}

func TestMigrationTarget(t *testing.T) {
	d := testDriver(t)
	for in, want := range map[string][2]string{
		"10.0.0.7":                          {"qemu+tcp://10.0.0.7/system", "tcp://10.0.0.7"},
		"qemu+tls://h.example/system":       {"qemu+tls://h.example/system", "tcp://h.example"},
		"qemu+unix:///system?socket=/s":     {"qemu+unix:///system?socket=/s", "tcp://127.0.0.1"},
		"qemu+tcp://[fd00::1]:16509/system": {"qemu+tcp://[fd00::1]:16509/system", "tcp://[fd00::1]"},
	} {
		c, data, err := d.migrationTarget(in)
		if err != nil || c != want[0] || data != want[1] {
			t.Errorf("%s -> %s %s %v, want %v", in, c, data, err, want)
		}
	}
	if _, _, err := d.migrationTarget(""); err == nil {
		t.Error("empty address accepted")
	}
}

func TestMapEvent(t *testing.T) {
	d := testDriver(t)
	msg := func(name string, ev lv.DomainEventType, detail int32) lv.DomainEventLifecycleMsg {
		return lv.DomainEventLifecycleMsg{Dom: lv.Domain{Name: name}, Event: int32(ev), Detail: detail}
	}
	run := known{state: core.StateRunning}
	cases := []struct {
		m     lv.DomainEventLifecycleMsg
		k     known
		ok    bool
		state core.VMState
		gone  bool
	}{
		{msg("a", lv.DomainEventStarted, 0), known{}, true, core.StateRunning, false},
		{msg("a", lv.DomainEventStarted, 0), run, false, "", false},
		{msg("a", lv.DomainEventSuspended, int32(lv.DomainEventSuspendedPaused)), run, true, core.StatePaused, false},
		{msg("a", lv.DomainEventSuspended, int32(lv.DomainEventSuspendedMigrated)), run, false, "", false},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedDestroyed)), run, true, "", true},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedMigrated)), run, true, "", true},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedShutdown)), known{state: core.StateRunning, persistent: true}, true, core.StateShutoff, false},
		{msg("a", lv.DomainEventUndefined, 0), known{state: core.StateShutoff, persistent: true}, true, "", true},
	}
	for i, c := range cases {
		ev, _, ok := d.mapEvent(c.m, c.k)
		if ok != c.ok || (ok && (ev.State != c.state || ev.Gone != c.gone)) {
			t.Errorf("case %d: %+v ok=%v", i, ev, ok)
		}
	}
	// A managed VM that shut down stays (shutoff marker); one being cycled is skipped.
	writeAtomic(d.path("m", extXML), []byte("<domain/>"))
	ev, _, ok := d.mapEvent(msg("m", lv.DomainEventStopped, int32(lv.DomainEventStoppedShutdown)), run)
	if !ok || ev.State != core.StateShutoff || d.readOff("m") != core.StateShutoff {
		t.Errorf("managed shutdown: %+v %v marker %q", ev, ok, d.readOff("m"))
	}
	d.addSkip("c")
	if _, _, ok := d.mapEvent(msg("c", lv.DomainEventStopped, int32(lv.DomainEventStoppedDestroyed)), run); ok {
		t.Error("cycle's stop not skipped")
	}
	if _, _, ok := d.mapEvent(msg("c", lv.DomainEventStopped, int32(lv.DomainEventStoppedDestroyed)), run); !ok {
		t.Error("skip applied twice")
	}
}
