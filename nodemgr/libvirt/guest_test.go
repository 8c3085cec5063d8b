package libvirt

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfile "github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/usher-vm/usher/nodemgr"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvVr1Xn2zS1p3Zc0Pq3A1C7dUIxFt8e0XyE0m2cQ0tA alice@laptop"

// testStore makes an image store with one kernel-boot image.
func testStore(t *testing.T) string {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"small.qcow2": "base", "vmlinuz": "k", "initramfs.gz": "i",
		"small.json":  `{"format":"qcow2","description":"test","kernel":"vmlinuz","initrd":"initramfs.gz","cmdline":"console=ttyS0 root=/dev/vda rw","min_mem_mb":256}`,
		"escape.json": `{"format":"raw","kernel":"../../etc/passwd"}`, "escape.raw": "x",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestGuestConfigAndDomain(t *testing.T) {
	d := testDriver(t)
	d.o.ImageDir, d.o.DiskDir, d.o.Bridge = testStore(t), t.TempDir(), "br0"
	d.o.LocalDiskDir = d.o.DiskDir
	d.o.VLANBridges = map[int]string{10: "br10"}
	spec := nodemgr.Spec{Name: "web1.alice.usher.test", MemMB: 256, Data: map[string]string{
		"image": "small", "ip": "10.77.0.10", "subnet": "10.77.0.0/24", "gateway": "10.77.0.1",
		"nameservers": "10.77.0.1", "search": "alice.usher.test", "ssh_keys": testKey,
	}}
	x, g, err := d.domainXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	def := parseDomain(t, x)
	wantCmd := "console=ttyS0 root=/dev/vda rw usher.hostname=web1 ip=10.77.0.10::10.77.0.1:255.255.255.0:web1::off usher.dns=10.77.0.1 usher.search=alice.usher.test"
	if def.OS.Kernel != filepath.Join(d.o.ImageDir, "vmlinuz") || def.OS.Initrd != filepath.Join(d.o.ImageDir, "initramfs.gz") || def.OS.Cmdline != wantCmd {
		t.Errorf("boot: kernel %q initrd %q\ncmdline %q\nwant    %q", def.OS.Kernel, def.OS.Initrd, def.OS.Cmdline, wantCmd)
	}
	disks := def.Devices.Disks
	if len(disks) != 2 || disks[0].Source.File.File != d.OverlayPath(spec.Name) || disks[0].Driver.Type != "qcow2" || disks[0].Target.Dev != "vda" ||
		disks[1].Source.File.File != d.SeedPath(spec.Name) || disks[1].ReadOnly == nil || disks[1].Target.Dev != "vdb" {
		t.Errorf("disks: %+v", disks)
	}
	nic := def.Devices.Interfaces
	if len(nic) != 1 || nic[0].Source.Bridge == nil || nic[0].Source.Bridge.Bridge != "br0" || nic[0].MAC.Address != "52:54:0a:4d:00:0a" {
		t.Errorf("nic: %+v", nic)
	}

	// The seed: an ISO 9660 labelled cidata with the three NoCloud files.
	if err := d.writeSeed(spec.Name, g); err != nil {
		t.Fatal(err)
	}
	files := readSeed(t, d.SeedPath(spec.Name))
	for name, want := range map[string][]string{
		"meta-data":      {`instance-id: "web1.alice.usher.test"`, "local-hostname: web1"},
		"user-data":      {"#cloud-config\n", "hostname: web1\n", "fqdn: web1.alice.usher.test\n", "ssh_authorized_keys:\n  - " + testKey + "\n"},
		"network-config": {"version: 2", `macaddress: "52:54:0a:4d:00:0a"`, `addresses: ["10.77.0.10/24"]`, `gateway4: "10.77.0.1"`, `search: ["alice.usher.test"]`},
	} {
		for _, w := range want {
			if !strings.Contains(files[name], w) {
				t.Errorf("%s lacks %q:\n%s", name, w, files[name])
			}
		}
	}
	if ents, _ := os.ReadDir(d.o.DiskDir); len(ents) != 1 {
		t.Errorf("disk dir holds %d entries, want the seed only (no work files left)", len(ents))
	}

	// A policy's user-data rides along as a second MIME part.
	spec.Data["user_data"] = "#!/bin/sh\necho hi\n"
	_, g, err = d.domainXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	sf, _ := g.seedFiles(spec.Name)
	ud := string(sf["user-data"])
	if !strings.Contains(ud, "multipart/mixed") || !strings.Contains(ud, "text/x-shellscript") || !strings.Contains(ud, "echo hi") || !strings.Contains(ud, "  - "+testKey) {
		t.Errorf("multipart user-data:\n%s", ud)
	}

	// VLAN 10 has its own bridge; VLAN 20 has none (unless tagging).
	spec.Data["vlan"] = "10"
	def = parseDomain(t, xmlOf(t, d, spec))
	if br := def.Devices.Interfaces[0].Source.Bridge.Bridge; br != "br10" {
		t.Errorf("vlan 10 on %q", br)
	}
	spec.Data["vlan"] = "20"
	if _, _, err := d.domainXML(spec); err == nil || !strings.Contains(err.Error(), "no bridge for VLAN 20") {
		t.Errorf("vlan 20: %v", err)
	}
	d.o.VLANTagging = true
	def = parseDomain(t, xmlOf(t, d, spec))
	in := def.Devices.Interfaces[0]
	if in.Source.Bridge.Bridge != "br0" || in.VLan == nil || in.VLan.Tags[0].ID != 20 || in.VirtualPort == nil || in.VirtualPort.Params.OpenVSwitch == nil {
		t.Errorf("tagged vlan 20: %+v vlan %+v port %+v", in.Source, in.VLan, in.VirtualPort)
	}

	// DHCP: ip=dhcp on the kernel line, dhcp4 in network-config.
	delete(spec.Data, "vlan")
	spec.Data["net"] = "dhcp"
	def = parseDomain(t, xmlOf(t, d, spec))
	if !strings.Contains(def.OS.Cmdline, " ip=dhcp") {
		t.Errorf("dhcp cmdline %q", def.OS.Cmdline)
	}
}

func TestGuestConfigRefusals(t *testing.T) {
	d := testDriver(t)
	d.o.ImageDir, d.o.Bridge = testStore(t), "br0"
	for _, c := range []struct {
		data map[string]string
		mem  int
		want string
	}{
		{map[string]string{"image": "nope"}, 256, "no such image"},
		{map[string]string{"image": "../small"}, 256, "image name"},
		{map[string]string{"image": "/etc/passwd"}, 256, "image name"},
		{map[string]string{"image": "escape"}, 256, "must be a path inside the store"},
		{map[string]string{"image": "small"}, 128, "needs at least 256 MiB"},
		{map[string]string{"ip": "10.0.0.300"}, 0, "not an IPv4 address"},
		{map[string]string{"ip": "fd00::1"}, 0, "not an IPv4 address"},
		{map[string]string{"ip": "10.0.1.5", "subnet": "10.0.0.0/24"}, 0, "does not contain"},
		{map[string]string{"ip": "10.0.0.5", "gateway": "gw"}, 0, "gateway"},
		{map[string]string{"ip": "10.0.0.5", "vlan": "5000"}, 0, "VLAN id"},
		{map[string]string{"ip": "10.0.0.5", "nameservers": "x"}, 0, "nameservers"},
		{map[string]string{"ip": "10.0.0.5", "search": "a..b"}, 0, "not a domain name"},
		{map[string]string{"ip": "10.0.0.5", "mac": "01:00:5e:00:00:01"}, 0, "unicast"},
		{map[string]string{"net": "carrier-pigeon"}, 0, "want static, dhcp or none"},
		{map[string]string{"net": "static"}, 0, "needs an address"},
		{map[string]string{"ssh_keys": "ssh-ed25519 AAAA\nno-pty ssh-rsa AAAA x"}, 0, "not a plain authorized_keys line"},
		{map[string]string{"ssh_keys": "ssh-ed25519 AAAA a: b"}, 0, "not a plain authorized_keys line"},
		{map[string]string{"hostname": "bad_name"}, 0, "hostname"},
	} {
		_, _, err := d.domainXML(nodemgr.Spec{Name: "v.alice.x", MemMB: c.mem, Data: c.data})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want one containing %q", c.data, err, c.want)
		}
	}
	d.o.Bridge = ""
	if _, _, err := d.domainXML(nodemgr.Spec{Name: "v", Data: map[string]string{"ip": "10.0.0.5"}}); err == nil || !strings.Contains(err.Error(), "no bridge or network") {
		t.Errorf("address without a bridge: %v", err)
	}
	// No guest configuration: no seed, no NIC, the kernel line as given.
	def := parseDomain(t, xmlOf(t, d, nodemgr.Spec{Name: "plain"}))
	if len(def.Devices.Disks) != 0 || len(def.Devices.Interfaces) != 0 || def.OS.Cmdline != "console=ttyS0 h=plain" {
		t.Errorf("plain guest: disks %d nics %d cmdline %q", len(def.Devices.Disks), len(def.Devices.Interfaces), def.OS.Cmdline)
	}
}

// readSeed reads the files of a seed ISO back and checks its label.
func readSeed(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	iso, err := iso9660.Read(diskfile.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimSpace(iso.Label()); l != "cidata" {
		t.Errorf("seed label %q, want cidata", l)
	}
	out := map[string]string{}
	ents, err := iso.ReadDir(".")
	if err != nil {
		t.Fatalf("reading the seed's folder: %v", err)
	}
	for _, e := range ents {
		r, err := iso.OpenFile(e.Name(), os.O_RDONLY)
		if err != nil {
			t.Fatalf("opening %s in the seed: %v", e.Name(), err)
		}
		b, _ := io.ReadAll(r)
		out[e.Name()] = string(b)
	}
	return out
}

func TestTapNames(t *testing.T) {
	a, b := TapName("host1", "web1.alice.x"), TapName("host2", "web1.alice.x")
	if a == b || len(a) != 14 || len(b) != 14 || TapName("host1", "web1.alice.x") != a || TapName("host1", "web2.alice.x") == a {
		t.Fatalf("tap names %q %q", a, b)
	}
	d := testDriver(t)
	d.o.Node, d.o.Bridge = "host1", "br0"
	x := xmlOf(t, d, nodemgr.Spec{Name: "web1.alice.x", Data: map[string]string{"ip": "10.0.0.5"}})
	if def := parseDomain(t, x); def.Devices.Interfaces[0].Target.Dev != a {
		t.Fatalf("NIC target %+v, want %s", def.Devices.Interfaces[0].Target, a)
	}
	out, changed, err := retarget(x, "host2", "web1.alice.x")
	if err != nil || !changed || parseDomain(t, out).Devices.Interfaces[0].Target.Dev != b {
		t.Fatalf("retarget: %v %v\n%s", changed, err, out)
	}
	plain := xmlOf(t, d, nodemgr.Spec{Name: "p"})
	if _, changed, err := retarget(plain, "host2", "p"); err != nil || changed {
		t.Errorf("a domain without NICs: %v %v", changed, err)
	}
}

// TestCPUWeightsByClass: a guaranteed guest's vCPUs weigh 512 times a
// best-effort guest's (libvirt <cputune><shares>).
func TestCPUWeightsByClass(t *testing.T) {
	d := testDriver(t)
	d.o.ImageDir, d.o.DiskDir, d.o.Bridge = testStore(t), t.TempDir(), "br0"
	d.o.LocalDiskDir = d.o.DiskDir
	for _, c := range []struct {
		qos    string
		shares uint
	}{{"", 2 * 3}, {"best-effort", 2 * 3}, {"guaranteed", 1024 * 3}} {
		spec := nodemgr.Spec{Name: "db1.alice.usher.test", MemMB: 256, VCPUs: 3, Data: map[string]string{"image": "small", "net": "none"}}
		if c.qos != "" {
			spec.Data["qos"] = c.qos
		}
		x, _, err := d.domainXML(spec)
		if err != nil {
			t.Fatal(err)
		}
		def := parseDomain(t, x)
		if def.CPUTune == nil || def.CPUTune.Shares == nil || def.CPUTune.Shares.Value != c.shares {
			t.Errorf("qos %q: cputune %+v, want shares %d", c.qos, def.CPUTune, c.shares)
		}
	}
}
