package libvirt

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/usher-vm/usher/api"

	lv "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/nodemgr"
)

// Tests that need no libvirtd (they run in the ordinary go test ./...).

func testDriver(t *testing.T) *Driver {
	return &Driver{o: Options{StateDir: t.TempDir(), DomainType: "qemu", Machine: "pc", Kernel: "/k", Cmdline: "console=ttyS0 h={name}", MigrationHost: "127.0.0.1"},
		log: slog.New(slog.DiscardHandler), skip: map[string]int{}}
}

// parseDomain unmarshals XML the driver produced; it fails the test if the
// XML is not well formed.
func parseDomain(t *testing.T, x string) *libvirtxml.Domain {
	t.Helper()
	var def libvirtxml.Domain
	if err := def.Unmarshal(x); err != nil {
		t.Fatalf("domain XML does not parse: %v\n%s", err, x)
	}
	return &def
}

func TestDomainXML(t *testing.T) {
	d := testDriver(t)
	x, _, err := d.domainXML(nodemgr.Spec{Name: "a&b", MemMB: 256, VCPUs: 2, Data: map[string]string{"initrd": "/i"}})
	if err != nil {
		t.Fatal(err)
	}
	def := parseDomain(t, x)
	if def.Type != "qemu" || def.Name != "a&b" {
		t.Errorf("type %q name %q", def.Type, def.Name)
	}
	if m := def.Memory; m == nil || m.Value != 256 || m.Unit != "MiB" {
		t.Errorf("memory %+v", m)
	}
	if v := def.VCPU; v == nil || v.Value != 2 {
		t.Errorf("vcpu %+v", v)
	}
	o := def.OS
	if o == nil || o.Type == nil {
		t.Fatalf("no os/type:\n%s", x)
	}
	if *o.Type != (libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: "pc"}) {
		t.Errorf("os type %+v", *o.Type)
	}
	if o.Kernel != "/k" || o.Initrd != "/i" || o.Cmdline != "console=ttyS0 h=a&b" || len(o.BootDevices) != 0 {
		t.Errorf("direct kernel boot: kernel %q initrd %q cmdline %q boot %v", o.Kernel, o.Initrd, o.Cmdline, o.BootDevices)
	}
	if def.Features == nil || def.Features.ACPI == nil {
		t.Error("no ACPI feature")
	}
	if def.OnPoweroff != "destroy" || def.OnReboot != "restart" || def.OnCrash != "destroy" {
		t.Errorf("on_poweroff %q on_reboot %q on_crash %q", def.OnPoweroff, def.OnReboot, def.OnCrash)
	}
	dv := def.Devices
	if dv == nil {
		t.Fatalf("no devices:\n%s", x)
	}
	if dv.Emulator != "" || len(dv.Disks) != 0 || len(dv.Interfaces) != 0 {
		t.Errorf("unexpected devices: emulator %q, %d disks, %d interfaces", dv.Emulator, len(dv.Disks), len(dv.Interfaces))
	}
	if len(dv.Serials) != 1 {
		t.Fatalf("%d serials", len(dv.Serials))
	}
	ser := dv.Serials[0]
	if ser.Source == nil || ser.Source.Pty == nil || ser.Log == nil || ser.Log.File != d.ConsolePath("a&b") || ser.Log.Append != "on" {
		t.Errorf("serial source %+v log %+v, want a pty logged to %s, appending", ser.Source, ser.Log, d.ConsolePath("a&b"))
	}
	if ser.Target == nil || ser.Target.Port == nil || *ser.Target.Port != 0 {
		t.Errorf("serial target %+v", ser.Target)
	}
	if b := dv.MemBalloon; b == nil || b.Model != "virtio" || b.Stats == nil || b.Stats.Period != 5 {
		t.Errorf("memballoon %+v", b)
	}
	if m, v, err := domainSize([]byte(x)); err != nil || m != 256 || v != 2 {
		t.Errorf("domainSize = %d MiB, %d vCPUs, %v", m, v, err)
	}

	// Defaults, and data overriding the options.
	def = parseDomain(t, xmlOf(t, d, nodemgr.Spec{Name: "y", Data: map[string]string{"kernel": "/k2", "cmdline": "x={name} {name}"}}))
	if def.Memory.Value != 128 || def.VCPU.Value != 1 || def.OS.Kernel != "/k2" || def.OS.Initrd != "" || def.OS.Cmdline != "x=y y" {
		t.Errorf("defaults/overrides: mem %d vcpu %d os %+v", def.Memory.Value, def.VCPU.Value, def.OS)
	}

	d.o.Kernel = ""
	if _, _, err := d.domainXML(nodemgr.Spec{Name: "x"}); err == nil || !strings.Contains(err.Error(), "no kernel and no image") {
		t.Errorf("no kernel and no image: %v", err)
	}
	// Emulator and network (with and without a MAC: one is derived).
	d.o.Kernel, d.o.Emulator, d.o.Network = "/k", "/usr/bin/qemu", "default"
	for mac, want := range map[string]string{"": defaultMAC("n", netip.Addr{}), "52:54:00:12:34:56": "52:54:00:12:34:56"} {
		def = parseDomain(t, xmlOf(t, d, nodemgr.Spec{Name: "n", Data: map[string]string{"mac": mac}}))
		if def.Devices.Emulator != "/usr/bin/qemu" {
			t.Errorf("emulator %q", def.Devices.Emulator)
		}
		if len(def.Devices.Interfaces) != 1 {
			t.Fatalf("%d interfaces", len(def.Devices.Interfaces))
		}
		in := def.Devices.Interfaces[0]
		if in.Source == nil || in.Source.Network == nil || in.Source.Network.Network != "default" || in.Model == nil || in.Model.Type != "virtio" {
			t.Errorf("interface source %+v model %+v", in.Source, in.Model)
		}
		if in.MAC == nil || in.MAC.Address != want {
			t.Errorf("interface mac %+v, want %q", in.MAC, want)
		}
	}
}

// Names and data with XML-special characters come out escaped exactly once:
// the XML is well formed and every value reads back unchanged.
func TestDomainXMLEscaping(t *testing.T) {
	d := testDriver(t)
	const nasty = `a<b>&c"d'e]]>`
	d.o.Network, d.o.Emulator, d.o.Machine = "net"+nasty, "/emu"+nasty, "pc"+nasty
	spec := nodemgr.Spec{Name: nasty, MemMB: 64, VCPUs: 1, Data: map[string]string{
		"kernel": "/k" + nasty, "initrd": "/i" + nasty, "cmdline": "c=" + nasty + " n={name}",
	}}
	x, _, err := d.domainXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{"<b>", "&c", `c"d`, "]]>"} {
		if strings.Contains(x, raw) {
			t.Errorf("XML contains unescaped %q:\n%s", raw, x)
		}
	}
	if strings.Contains(x, "&amp;amp;") || strings.Contains(x, "&amp;lt;") {
		t.Errorf("XML is escaped twice:\n%s", x)
	}
	def := parseDomain(t, x)
	dv := def.Devices
	got := map[string]string{
		"name": def.Name, "machine": def.OS.Type.Machine, "kernel": def.OS.Kernel, "initrd": def.OS.Initrd, "cmdline": def.OS.Cmdline,
		"emulator": dv.Emulator, "network": dv.Interfaces[0].Source.Network.Network,
		"console": dv.Serials[0].Log.File,
	}
	want := map[string]string{
		"name": nasty, "machine": "pc" + nasty, "kernel": "/k" + nasty, "initrd": "/i" + nasty, "cmdline": "c=" + nasty + " n=" + nasty,
		"emulator": "/emu" + nasty, "network": "net" + nasty, "console": d.ConsolePath(nasty),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %q, want %q", k, got[k], w)
		}
	}
	// A MAC that is not one is refused, not written.
	spec.Data["mac"] = "m" + nasty
	if _, _, err := d.domainXML(spec); err == nil || !strings.Contains(err.Error(), "not a unicast Ethernet address") {
		t.Errorf("bad MAC: %v", err)
	}
}

func TestDomainSize(t *testing.T) {
	for _, c := range []struct {
		xml         string
		mem, vcpus  int
		errContains string
	}{
		// As libvirt writes it (adopted domains).
		{`<domain type='kvm' id='3'><name>x</name><memory unit='KiB'>262144</memory><currentMemory unit='KiB'>262144</currentMemory><vcpu placement='static'>3</vcpu></domain>`, 256, 3, ""},
		{`<domain><memory>1048576</memory><vcpu>1</vcpu></domain>`, 1024, 1, ""},
		{`<domain><memory unit='G'>2</memory><vcpu>4</vcpu></domain>`, 2048, 4, ""},
		{`<domain><memory unit='bytes'>536870912</memory></domain>`, 512, 0, ""},
		{`<domain><memory unit='MB'>1048576</memory></domain>`, 1000000, 0, ""},
		{`<domain><name>x</name></domain>`, 0, 0, ""},
		{`<domain><memory unit='parsecs'>1</memory></domain>`, 0, 0, `unknown unit "parsecs"`},
		{`<domain><memory unit='EiB'>1024</memory></domain>`, 0, 0, "overflows"},
		{`<domain><memory>12`, 0, 0, "parsing domain XML"},
		{`<domain><vcpu>two</vcpu></domain>`, 0, 0, "parsing domain XML"},
	} {
		m, v, err := domainSize([]byte(c.xml))
		if c.errContains != "" {
			if err == nil || !strings.Contains(err.Error(), c.errContains) {
				t.Errorf("%s: err %v, want one containing %q", c.xml, err, c.errContains)
			}
			continue
		}
		if err != nil || m != c.mem || v != c.vcpus {
			t.Errorf("%s: %d MiB %d vCPUs %v, want %d %d", c.xml, m, v, err, c.mem, c.vcpus)
		}
	}
}

func TestHostUUID(t *testing.T) {
	caps := `<capabilities>
  <host>
    <uuid>aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee</uuid>
    <cpu><arch>x86_64</arch></cpu>
  </host>
  <guest><os_type>hvm</os_type><arch name='x86_64'><machine>pc</machine></arch></guest>
</capabilities>`
	if u, err := hostUUID(caps); err != nil || u != "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" {
		t.Errorf("hostUUID = %q, %v", u, err)
	}
	if u, err := hostUUID("<capabilities><host></host></capabilities>"); err != nil || u != "" {
		t.Errorf("no uuid: %q, %v", u, err)
	}
	if _, err := hostUUID("<capabilities><host>"); err == nil || !strings.Contains(err.Error(), "capabilities") {
		t.Errorf("truncated capabilities: %v", err)
	}
}

func xmlOf(t *testing.T, d *Driver, spec nodemgr.Spec) string {
	t.Helper()
	x, _, err := d.domainXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	return x
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
	run := known{state: api.StateRunning}
	cases := []struct {
		m     lv.DomainEventLifecycleMsg
		k     known
		ok    bool
		state api.VMState
		gone  bool
	}{
		{msg("a", lv.DomainEventStarted, 0), known{}, true, api.StateRunning, false},
		{msg("a", lv.DomainEventStarted, 0), run, false, "", false},
		{msg("a", lv.DomainEventSuspended, int32(lv.DomainEventSuspendedPaused)), run, true, api.StatePaused, false},
		{msg("a", lv.DomainEventSuspended, int32(lv.DomainEventSuspendedMigrated)), run, false, "", false},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedDestroyed)), run, true, "", true},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedMigrated)), run, true, "", true},
		{msg("a", lv.DomainEventStopped, int32(lv.DomainEventStoppedShutdown)), known{state: api.StateRunning, persistent: true}, true, api.StateShutoff, false},
		{msg("a", lv.DomainEventUndefined, 0), known{state: api.StateShutoff, persistent: true}, true, "", true},
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
	if !ok || ev.State != api.StateShutoff || d.readOff("m") != api.StateShutoff {
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
