//go:build libvirt

package libvirttest

import (
	"bufio"
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

	"github.com/miekg/dns"

	"github.com/usher-vm/usher/internal/waitfor"
)

const labDomain = "alice.usher.test"

// guest describes a test domain: an initramfs or disk guest with a NIC on
// the lab bridge and a pty serial console logged to Console.
type guest struct {
	Name, MAC       string
	MemMB           int
	Kernel, Initrd  string
	Cmdline         string
	Disk            string // qcow2 on vda, or ""
	Seed            string // NoCloud ISO (raw, read-only), or ""
	Console, Bridge string
}

func (g guest) xml() string {
	var disks strings.Builder
	dev := 'a'
	if g.Disk != "" {
		fmt.Fprintf(&disks, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vd%c' bus='virtio'/></disk>\n", g.Disk, dev)
		dev++
	}
	if g.Seed != "" {
		fmt.Fprintf(&disks, "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vd%c' bus='virtio'/><readonly/></disk>\n", g.Seed, dev)
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <devices>
    %s
    <interface type='bridge'><source bridge='%s'/><mac address='%s'/><model type='virtio'/></interface>
    <serial type='pty'><log file='%s' append='on'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
`, g.Name, g.MemMB, g.Kernel, g.Initrd, g.Cmdline, disks.String(), g.Bridge, g.MAC, g.Console)
}

// create defines and starts g on host n (transient) and destroys it when
// the test ends.
func (h *Harness) create(t *testing.T, n int, dir string, g guest) {
	t.Helper()
	p := filepath.Join(dir, g.Name+".xml")
	if err := os.WriteFile(p, []byte(g.xml()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Virsh(n, "create", p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range []int{1, 2} {
			h.Virsh(n, "destroy", g.Name)
		}
	})
}

// seedISO writes a NoCloud seed (meta-data, user-data with the public key
// of key, network-config) as an ISO9660 volume labelled cidata.
func seedISO(t *testing.T, dir, hostname, key string) string {
	t.Helper()
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Fatal("genisoimage not found (Debian package genisoimage; harness.sh install adds it)")
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	sd := filepath.Join(dir, hostname+"-seed")
	files := map[string]string{
		"meta-data": fmt.Sprintf("instance-id: %s-0001\nlocal-hostname: %s\n", hostname, hostname),
		"user-data": fmt.Sprintf("#cloud-config\ndisable_root: false\nssh_pwauth: false\nssh_authorized_keys:\n  - %s\nhostname: %s\n",
			strings.TrimSpace(string(pub)), hostname),
		"network-config": "version: 2\n",
	}
	if err := os.MkdirAll(sd, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(sd, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	iso := filepath.Join(dir, hostname+"-seed.iso")
	cmd := exec.Command("genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock", "user-data", "meta-data", "network-config")
	cmd.Dir = sd
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("genisoimage: %v: %s", err, out)
	}
	return iso
}

// update sends an RFC 2136 update for zone, signed with the lab's TSIG
// key, to named through the forwarder on the root namespace's loopback.
func update(lab *Lab, zone string, tsig bool, add ...string) (int, error) {
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	var rrs []dns.RR
	for _, s := range add {
		rr, err := dns.NewRR(s)
		if err != nil {
			return 0, err
		}
		rrs = append(rrs, rr)
	}
	m.RemoveRRset(rrs)
	m.Insert(rrs)
	c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
	if tsig {
		m.SetTsig(lab.TSIGName, dns.HmacSHA256, 300, time.Now().Unix())
		c.TsigSecret = map[string]string{lab.TSIGName: lab.TSIGSecret}
	}
	r, _, err := c.Exchange(m, lab.DNSForward)
	if err != nil {
		return 0, err
	}
	return r.Rcode, nil
}

// TestLabGuests boots guests on the lab network directly with virsh (not
// through the Usher driver): a busybox guest with a static address and a
// NoCloud seed (its key works, the test key does not), reachable by name
// after a TSIG-signed DNS update and across a live migration; a DHCP guest
// from the lab's plan without a seed (the test key works); and a Debian
// disk image with a seed.
func TestLabGuests(t *testing.T) {
	h := StartHarness(t)
	lab := h.MustStartLab(t, labDomain)
	t.Logf("lab: netns %s, DNS forward %s, TSIG %s", lab.NetNS, lab.DNSForward, lab.TSIGName)
	// In the run folder: the harness's watcher removes it even if this
	// test binary dies.
	dir := filepath.Join(h.RunDir, "labtest")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	userKey := NewKey(t, dir, "user")
	mask := lab.Netmask
	gw := lab.Gateway
	cmdline := func(name, ip string) string {
		return fmt.Sprintf("console=ttyS0 quiet usher.hostname=%s ip=%s usher.dns=%s usher.search=%s", name, ip, gw, lab.Domain)
	}

	// web1: static address, seed with the user's key, on host1.
	start := time.Now()
	web1 := guest{Name: "web1", MAC: "52:54:00:77:00:10", MemMB: 128, Kernel: h.Kernel, Initrd: h.Initrd,
		Cmdline: cmdline("web1", "10.77.0.10::"+gw+":"+mask+":web1::off"),
		Seed:    seedISO(t, dir, "web1", userKey), Console: filepath.Join(dir, "web1.console"), Bridge: lab.Bridge}
	h.create(t, 1, dir, web1)
	// web2: DHCP from the plan (written after dnsmasq started: the reload
	// must pick it up), no seed, on host2.
	if err := lab.SetDHCPHosts([]DHCPHost{{MAC: "52:54:00:77:00:11", IP: "10.77.0.11", Name: "web2"}}); err != nil {
		t.Fatal(err)
	}
	web2 := guest{Name: "web2", MAC: "52:54:00:77:00:11", MemMB: 128, Kernel: h.Kernel, Initrd: h.Initrd,
		Cmdline: "console=ttyS0 quiet usher.hostname=web2 ip=dhcp", Console: filepath.Join(dir, "web2.console"), Bridge: lab.Bridge}
	h.create(t, 2, dir, web2)

	lab.WaitSSHWithin(t, BootWait, userKey, "10.77.0.10", "web1")
	t.Logf("web1: create to ssh %v", time.Since(start).Round(100*time.Millisecond))
	lab.WaitSSHWithin(t, BootWait, h.SSHKey, "10.77.0.11", "web2")
	t.Logf("web2 (DHCP): create to ssh %v", time.Since(start).Round(100*time.Millisecond))
	if _, _, text := Console(web1.Console); !strings.Contains(text, "USHER-SEED hostname=web1 keys=1") || !strings.Contains(text, "USHER-GUEST-UP web1") {
		t.Errorf("web1 console lacks the seed and up markers:\n%s", text)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// With a seed only the seed's keys are installed.
	if out, err := lab.SSH(ctx, h.SSHKey, "10.77.0.10", "hostname"); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("the test key logged in to web1 (seeded): %q, %v", out, err)
	}
	if out, err := lab.SSH(ctx, userKey, "10.77.0.11", "hostname"); err == nil {
		t.Errorf("the seed's key logged in to web2 (no seed): %q", out)
	}

	// DNS: an unsigned update is refused; a signed one, sent from the root
	// namespace through the forwarder, makes web1 resolvable in the lab.
	if rc, err := update(lab, lab.Domain, false, "web1."+lab.Domain+". 60 IN A 10.77.0.10"); err != nil || rc != dns.RcodeRefused {
		t.Fatalf("unsigned update: rcode %s, %v; want REFUSED", dns.RcodeToString[rc], err)
	}
	if rc, err := update(lab, lab.Domain, true, "web1."+lab.Domain+". 60 IN A 10.77.0.10"); err != nil || rc != dns.RcodeSuccess {
		t.Fatalf("update: rcode %s, %v", dns.RcodeToString[rc], err)
	}
	if rc, err := update(lab, "0.77.10.in-addr.arpa", true, "10.0.77.10.in-addr.arpa. 60 IN PTR web1."+lab.Domain+"."); err != nil || rc != dns.RcodeSuccess {
		t.Fatalf("reverse update: rcode %s, %v", dns.RcodeToString[rc], err)
	}
	if a, err := lab.Dig(ctx, "web1."+lab.Domain); err != nil || len(a) != 1 || a[0] != "10.77.0.10" {
		t.Fatalf("dig web1: %q, %v", a, err)
	}
	if a, err := lab.Dig(ctx, "10.77.0.10", "PTR"); err != nil || len(a) != 1 || a[0] != "web1."+lab.Domain+"." {
		t.Fatalf("dig -x 10.77.0.10: %q, %v", a, err)
	}
	for _, host := range []string{"web1." + lab.Domain, "web1"} { // by FQDN and through the search domain
		if out, err := lab.SSH(ctx, userKey, host, "hostname"); err != nil || out != "web1" {
			t.Fatalf("ssh root@%s hostname: %q, %v", host, out, err)
		}
	}

	// Live migration host1 -> host2 with an ssh session printing a counter:
	// the session survives and the guest keeps its address.
	t.Run("LiveMigration", func(t *testing.T) {
		sctx, stop := context.WithTimeout(t.Context(), 2*time.Minute)
		defer stop()
		sess := lab.Cmd(sctx, SSHArgs(userKey, "web1."+lab.Domain, "i=0; while [ $i -lt 1200 ]; do echo $i; i=$((i+1)); sleep 0.1; done")...)
		stdout, err := sess.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		lines, last := 0, ""
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				mu.Lock()
				lines, last = lines+1, sc.Text()
				mu.Unlock()
			}
		}()
		defer func() { stop(); <-done; sess.Wait() }()
		count := func() (int, string) { mu.Lock(); defer mu.Unlock(); return lines, last }
		waitfor.True(t, time.Minute, "the ssh session to print", func() bool { n, _ := count(); return n >= 5 })

		t0 := time.Now()
		if _, err := h.Virsh(1, "migrate", "--live", "web1", h.URI2, "tcp://127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		t.Logf("migration took %v", time.Since(t0).Round(10*time.Millisecond))
		h.WaitDomstate(t, 2, "web1", "running")
		h.WaitDomstate(t, 1, "web1", "")
		after, _ := count()
		waitfor.Error(t, time.Minute, "the ssh session to go on after the migration", func() error {
			if n, l := count(); n < after+10 {
				return fmt.Errorf("%d lines (last %q), %d at the end of the migration", n, l, after)
			}
			return nil
		})
		if out, err := lab.SSH(sctx, userKey, "10.77.0.10", "hostname"); err != nil || out != "web1" {
			t.Fatalf("after the migration: ssh root@10.77.0.10 hostname: %q, %v", out, err)
		}
		if boots, _, _ := Console(web1.Console); boots != 1 {
			t.Errorf("web1 console shows %d boots, want 1 (append='on' across the migration)", boots)
		}
	})

	// A Debian disk image: per-VM overlay, kernel and initramfs from the
	// image store, a seed with the user's key.
	t.Run("DiskImage", func(t *testing.T) {
		t0 := time.Now()
		store, err := h.BuildImage()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("image store %s ready in %v", store, time.Since(t0).Round(100*time.Millisecond))
		var meta struct {
			Format, Kernel, Initrd, Cmdline string
			MinMemMB                        int `json:"min_mem_mb"`
		}
		b, err := os.ReadFile(filepath.Join(store, "debian-small.json"))
		if err == nil {
			err = json.Unmarshal(b, &meta)
		}
		if err != nil || meta.Format != "qcow2" || meta.Kernel == "" || meta.Initrd == "" || meta.MinMemMB < 128 {
			t.Fatalf("image metadata %s: %+v, %v", b, meta, err)
		}
		disk := filepath.Join(dir, "disk1.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(store, "debian-small.qcow2"), "-F", "qcow2", disk).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		disk1 := guest{Name: "disk1", MAC: "52:54:00:77:00:20", MemMB: meta.MinMemMB,
			Kernel: filepath.Join(store, meta.Kernel), Initrd: filepath.Join(store, meta.Initrd),
			Cmdline: meta.Cmdline + fmt.Sprintf(" usher.hostname=disk1 ip=10.77.0.20::%s:%s:disk1::off usher.dns=%s usher.search=%s", gw, mask, gw, lab.Domain),
			Disk:    disk, Seed: seedISO(t, dir, "disk1", userKey), Console: filepath.Join(dir, "disk1.console"), Bridge: lab.Bridge}
		ctx, cancel := context.WithTimeout(t.Context(), DiskBootWait+time.Minute)
		defer cancel()
		t0 = time.Now()
		h.create(t, 2, dir, disk1)
		lab.WaitSSH(t, userKey, "10.77.0.20", "disk1")
		t.Logf("disk1: create to ssh %v", time.Since(t0).Round(100*time.Millisecond))
		WaitConsole(t, disk1.Console, 1, -1)
		if out, err := lab.SSH(ctx, userKey, "10.77.0.20", "cat /etc/hostname; ip -4 -o addr show scope global"); err != nil || !strings.Contains(out, "disk1") || !strings.Contains(out, "10.77.0.20/24") {
			t.Errorf("disk1: %q, %v", out, err)
		}
		if out, err := lab.SSH(ctx, h.SSHKey, "10.77.0.20", "hostname"); err == nil {
			t.Errorf("the test key logged in to disk1 (seeded): %q", out)
		}
	})
}
