//go:build libvirt

package libvirt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/libvirt/libvirttest"
)

// tinyStore is an image store with one kernel-boot image whose disk the
// initramfs guest ignores: the overlay, seed and console machinery of a
// real image, at the initramfs guest's boot time.
func tinyStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(H.RunDir, "images-"+t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range [][2]string{{H.Kernel, "vmlinuz"}, {H.Initrd, "initramfs.gz"}} {
		if err := os.Link(f[0], filepath.Join(dir, f[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "tiny.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	meta := `{"format":"raw","description":"initramfs guest","kernel":"vmlinuz","initrd":"initramfs.gz","cmdline":"console=ttyS0 quiet"}`
	if err := os.WriteFile(filepath.Join(dir, "tiny.json"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// consoleReader collects what a console prints.
type consoleReader struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *consoleReader) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(b)
}

func (c *consoleReader) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// A VM with an image, an address and a key: an overlay of the image, a
// NIC on the lab's bridge with the MAC from its address, a seed that
// installs the key (the test key is refused), ssh to its address; its
// console both ways; live migration keeps address, overlay and console;
// destroy removes overlay and seed.
func TestGuestConfiguration(t *testing.T) {
	lab := H.MustStartLab(t, "usher.test")
	store := tinyStore(t)
	disks := filepath.Join(H.RunDir, "disks-"+t.Name()) // one path both hosts see: shared storage
	net := func(o *libvirt.Options) {
		o.Bridge, o.ImageDir, o.DiskDir, o.DiskMigration = lab.Bridge, store, disks, libvirt.DiskSharedUnsafe
	}
	d1, r1 := newDriver(t, 1, "n1", net)
	d2, r2 := newDriver(t, 2, "n2", net)
	keyDir := t.TempDir()
	key := libvirttest.NewKey(t, keyDir, "alice")
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	const name, ip = "gc1.alice.usher.test", "10.77.0.41"
	destroyLater(t, name)
	spec := nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1, Data: api.StringMap{
		api.DataImage: "tiny", api.DataIP: ip, api.DataSubnet: "10.77.0.0/24", api.DataGateway: lab.Gateway,
		api.DataNameservers: lab.Gateway, api.DataSearch: "alice.usher.test", api.DataSSHKeys: strings.TrimSpace(string(pub)),
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m := r1.mark()
	if err := d1.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	r1.wait(t, m, name, "running", isState(api.StateRunning))

	// The overlay's backing file is the image; the NIC has the MAC made
	// from the address.
	out, err := exec.Command("qemu-img", "info", "--output=json", "-U", d1.OverlayPath(name)).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		Format  string `json:"format"`
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Format != "qcow2" || info.Backing != filepath.Join(store, "tiny.raw") {
		t.Fatalf("overlay: %+v %v", info, err)
	}
	if x, _ := H.Virsh(1, "domiflist", name); !strings.Contains(x, "52:54:0a:4d:00:29") || !strings.Contains(x, lab.Bridge) {
		t.Errorf("interface list:\n%s", x)
	}

	// ssh with the seeded key, not with the build's test key.
	lab.WaitSSHWithin(t, libvirttest.BootWait, key, ip, "gc1")
	if _, err := lab.SSH(ctx, lab.SSHKey, ip, "hostname"); err == nil {
		t.Error("the build's test key logs in: the seed's keys did not replace it")
	}
	if got, err := lab.SSH(ctx, key, ip, "ip -4 -o addr show dev eth0"); err != nil || !strings.Contains(got, ip+"/24") {
		t.Errorf("guest address: %q %v", got, err)
	}

	// The console: its log has the boot; typing runs in the guest.
	log, err := d1.ConsoleLog(ctx, name, 1<<20)
	if err != nil || !strings.Contains(string(log), "USHER-SEED hostname=gc1 keys=1") {
		t.Fatalf("console log: %v\n%s", err, log)
	}
	typeInto := func(d *libvirt.Driver, word string) {
		t.Helper()
		con, err := d.Console(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		defer con.Close()
		var seen consoleReader
		done := make(chan struct{})
		go func() { defer close(done); bufCopy(&seen, con) }()
		want := fmt.Sprintf("USHER-ECHO-%s-42", word)
		waitfor.Error(t, 60*time.Second, "the guest's shell to answer on the console", func() error {
			if strings.Contains(seen.String(), want) {
				return nil
			}
			// typed again until answered: the shell may not have started yet
			if _, err := fmt.Fprintf(con, "echo USHER-ECHO-%s-$((6*7))\n", word); err != nil {
				return err
			}
			return fmt.Errorf("not yet; console shows %q", tail(seen.String(), 300))
		})
		con.Close()
		<-done
	}
	typeInto(d1, "before")

	// Live migration: same address, same overlay, the console follows.
	m2 := r2.mark()
	if err := d1.Migrate(ctx, name, "n2", H.URI2); err != nil {
		t.Fatal(err)
	}
	r2.wait(t, m2, name, "running on n2", isState(api.StateRunning))
	if got, err := lab.SSH(ctx, key, ip, "hostname"); err != nil || got != "gc1" {
		t.Fatalf("after migration: %q %v", got, err)
	}
	if _, err := os.Stat(d2.OverlayPath(name)); err != nil {
		t.Fatalf("overlay gone after migration: %v", err)
	}
	typeInto(d2, "after")
	if log, err := d2.ConsoleLog(ctx, name, 1<<20); err != nil || !strings.Contains(string(log), "USHER-ECHO-before-42") {
		t.Errorf("the destination's console log lacks the source's: %v", err)
	}

	// Destroy removes overlay and seed.
	if err := d2.Op(ctx, name, api.OpDestroy, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d2.OverlayPath(name), d2.SeedPath(name)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after destroy (%v)", p, err)
		}
	}

	// DHCP stays possible: the site's server (the lab's dnsmasq) answers
	// the MAC the VM's data gives.
	const dhcpName, dhcpIP, dhcpMAC = "gc3.alice.usher.test", "10.77.0.55", "52:54:00:77:00:55"
	destroyLater(t, dhcpName)
	if err := lab.SetDHCPHosts([]libvirttest.DHCPHost{{MAC: dhcpMAC, IP: dhcpIP, Name: "gc3"}}); err != nil {
		t.Fatal(err)
	}
	if err := d1.Start(ctx, nodemgr.Spec{Name: dhcpName, MemMB: 128, VCPUs: 1, Data: api.StringMap{
		api.DataNet: "dhcp", api.DataMAC: dhcpMAC, api.DataSSHKeys: strings.TrimSpace(string(pub))}}); err != nil {
		t.Fatal(err)
	}
	lab.WaitSSHWithin(t, libvirttest.BootWait, key, dhcpIP, "gc3")
	if err := d1.Op(ctx, dhcpName, api.OpDestroy, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}

	// A start that fails leaves no disks behind: an image the store lacks.
	bad := nodemgr.Spec{Name: "gc2.alice.usher.test", MemMB: 128, Data: api.StringMap{api.DataImage: "nope"}}
	if err := d1.Start(ctx, bad); err == nil || !strings.Contains(err.Error(), "no such image") {
		t.Errorf("start with an unknown image: %v", err)
	}
	if ents, _ := os.ReadDir(disks); len(ents) != 0 {
		t.Errorf("disk dir not empty: %v", ents)
	}
}

func bufCopy(dst *consoleReader, src interface{ Read([]byte) (int, error) }) {
	b := make([]byte, 4096)
	for {
		n, err := src.Read(b)
		if n > 0 {
			dst.Write(b[:n])
		}
		if err != nil {
			return
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Without shared storage: each host's disk folder is its own (the same
// path, /var/lib/libvirt/usher-disks, is a different folder in each host's
// mount namespace). The target makes the overlay and seed before the
// migration, libvirt copies the overlay's data, the source's files go;
// what the guest wrote to its disk is there after the move.
func TestDiskCopyMigration(t *testing.T) {
	lab := H.MustStartLab(t, "usher.test")
	store := tinyStore(t)
	copyMode := func(n int) func(*libvirt.Options) {
		return func(o *libvirt.Options) {
			o.Bridge, o.ImageDir, o.DiskMigration = lab.Bridge, store, libvirt.DiskCopy
			o.DiskDir = "/var/lib/libvirt/usher-disks"
			o.LocalDiskDir = filepath.Join(H.RunDir, fmt.Sprintf("host%d", n), "lib", "usher-disks")
		}
	}
	d1, r1 := newDriver(t, 1, "c1", copyMode(1))
	d2, r2 := newDriver(t, 2, "c2", copyMode(2))
	key := libvirttest.NewKey(t, t.TempDir(), "alice")
	pub, _ := os.ReadFile(key + ".pub")
	const name, ip = "cp1.alice.usher.test", "10.77.0.42"
	destroyLater(t, name)
	spec := nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1, Data: api.StringMap{
		api.DataImage: "tiny", api.DataIP: ip, api.DataSubnet: "10.77.0.0/24", api.DataSSHKeys: strings.TrimSpace(string(pub))}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m := r1.mark()
	if err := d1.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	r1.wait(t, m, name, "running", isState(api.StateRunning))
	lab.WaitSSHWithin(t, libvirttest.BootWait, key, ip, "cp1")
	if _, err := lab.SSH(ctx, key, ip, "echo USHER-DISK-DATA | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null"); err != nil {
		t.Fatal(err)
	}
	if !d1.Capabilities().PrepareIncoming {
		t.Fatal("copy mode does not ask the target to prepare")
	}
	if err := d2.PrepareIncoming(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if d1.OverlayPath(name) == d2.OverlayPath(name) {
		t.Fatal("both hosts' disk folders are the same folder: not a copy test")
	}
	m2 := r2.mark()
	if err := d1.Migrate(ctx, name, "c2", H.URI2); err != nil {
		t.Fatal(err)
	}
	r2.wait(t, m2, name, "running on c2", isState(api.StateRunning))
	if _, err := os.Stat(d1.OverlayPath(name)); !os.IsNotExist(err) {
		t.Errorf("the source's overlay is still there (%v)", err)
	}
	if got, err := lab.SSH(ctx, key, ip, "dd if=/dev/vda bs=16 count=1 2>/dev/null"); err != nil || !strings.HasPrefix(got, "USHER-DISK-DATA") {
		t.Fatalf("the guest's disk after the move: %q %v", got, err)
	}
	if err := d2.Op(ctx, name, api.OpDestroy, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d2.OverlayPath(name)); !os.IsNotExist(err) {
		t.Errorf("the target's overlay survived destroy (%v)", err)
	}
	// A prepared migration that does not happen leaves nothing behind.
	if err := d2.PrepareIncoming(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d2.AbortIncoming(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d2.OverlayPath(name)); !os.IsNotExist(err) {
		t.Errorf("abort left the overlay (%v)", err)
	}
}
