package libvirt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"mime/multipart"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	diskfile "github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/images"
	"github.com/usher-vm/usher/nodemgr"
)

// Files the driver keeps in DiskDir, per domain.
const (
	extOverlay = ".qcow2"    // copy-on-write overlay of the VM's image
	extSeed    = ".seed.iso" // cloud-init NoCloud seed (label cidata)
)

// Disk migration modes (Options.DiskMigration).
const (
	// DiskShared: DiskDir is storage every host of the migration domain
	// sees at the same path, and libvirt can tell (NFS, a cluster file
	// system it knows): migration moves memory only.
	DiskShared = "shared"
	// DiskSharedUnsafe: DiskDir is shared at the same path but libvirt
	// cannot tell (it refuses "unsafe" migrations otherwise): migration
	// moves memory only, with VIR_MIGRATE_UNSAFE. Only when the path
	// really is shared, cache coherent storage.
	DiskSharedUnsafe = "shared-unsafe"
	// DiskCopy: DiskDir is local storage at the same path on every host:
	// the target makes the VM's overlay (of its own copy of the image) and
	// seed before the migration (PrepareIncoming), libvirt copies the
	// overlay's data with the memory (VIR_MIGRATE_NON_SHARED_INC), and the
	// source removes its files afterwards.
	DiskCopy = "copy"
)

// guestConf is a VM's guest configuration, from its data (see the
// api.Data* keys), checked.
type guestConf struct {
	hostname string // short host name
	fqdn     string
	image    *images.Image
	nic      bool
	dhcp     bool
	ip       netip.Addr
	prefix   int
	gateway  netip.Addr
	dns      []netip.Addr
	search   []string
	vlan     int
	mac      string
	keys     []string
	userData string
}

// seeded reports whether the guest gets a NoCloud seed: whenever Usher
// configures anything in it.
func (g *guestConf) seeded() bool {
	return g.image != nil || g.nic || len(g.keys) > 0 || g.userData != ""
}

func badData(name, key, format string, args ...any) error {
	return fmt.Errorf("libvirt: %s: data %s: %s", name, key, fmt.Sprintf(format, args...))
}

// guestConfig reads and checks a VM's guest configuration.
func (d *Driver) guestConfig(spec nodemgr.Spec) (*guestConf, error) {
	data := spec.Data
	g := &guestConf{fqdn: spec.Name, hostname: spec.Name}
	if i := strings.IndexByte(spec.Name, '.'); i > 0 {
		g.hostname = spec.Name[:i]
	}
	if h := data[api.DataHostname]; h != "" {
		if err := api.ValidLabel(h); err != nil {
			return nil, badData(spec.Name, api.DataHostname, "%v", err)
		}
		g.hostname = h
	}
	if name := data[api.DataImage]; name != "" {
		im, err := images.Store{Dir: d.o.ImageDir}.Get(name)
		if err != nil {
			return nil, fmt.Errorf("libvirt: %s: %w", spec.Name, err)
		}
		if im.MinMemMB > 0 && spec.MemMB > 0 && spec.MemMB < im.MinMemMB {
			return nil, fmt.Errorf("libvirt: %s: image %s needs at least %d MiB of memory (the VM has %d)", spec.Name, name, im.MinMemMB, spec.MemMB)
		}
		g.image = im
	}
	mode := data[api.DataNet]
	switch mode {
	case "", "static", "dhcp", "none":
	default:
		return nil, badData(spec.Name, api.DataNet, "%q: want static, dhcp or none", mode)
	}
	if s := data[api.DataIP]; s != "" && mode != "none" {
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Is4() {
			return nil, badData(spec.Name, api.DataIP, "%q is not an IPv4 address", s)
		}
		g.ip, g.prefix, g.nic = ip, 24, true
		if sub := data[api.DataSubnet]; sub != "" {
			p, err := netip.ParsePrefix(sub)
			if err != nil || !p.Addr().Is4() {
				return nil, badData(spec.Name, api.DataSubnet, "%q is not an IPv4 subnet (10.0.0.0/24)", sub)
			}
			if !p.Contains(ip) {
				return nil, badData(spec.Name, api.DataSubnet, "%s does not contain the address %s", sub, ip)
			}
			g.prefix = p.Bits()
		}
	}
	if mode == "dhcp" {
		g.nic, g.dhcp = true, true
	}
	if mode == "static" && !g.ip.IsValid() {
		return nil, badData(spec.Name, api.DataNet, "static needs an address in data ip")
	}
	if s := data[api.DataGateway]; s != "" && g.nic {
		gw, err := netip.ParseAddr(s)
		if err != nil || !gw.Is4() {
			return nil, badData(spec.Name, api.DataGateway, "%q is not an IPv4 address", s)
		}
		g.gateway = gw
	}
	for _, s := range splitList(data[api.DataNameservers]) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, badData(spec.Name, api.DataNameservers, "%q is not an address", s)
		}
		g.dns = append(g.dns, a)
	}
	for _, s := range splitList(data[api.DataSearch]) {
		if err := api.ValidVMName(s); err != nil {
			return nil, badData(spec.Name, api.DataSearch, "%q is not a domain name", s)
		}
		g.search = append(g.search, s)
	}
	if s := data[api.DataVLAN]; s != "" && g.nic {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 4094 {
			return nil, badData(spec.Name, api.DataVLAN, "%q: want a VLAN id from 1 to 4094", s)
		}
		g.vlan = v
	}
	if g.nic && d.o.Bridge == "" && len(d.o.VLANBridges) == 0 && d.o.Network == "" {
		return nil, fmt.Errorf("libvirt: %s: has an address but node %s has no bridge or network for guests (lnm.libvirt_bridge)", spec.Name, d.o.Node)
	}
	if g.nic || d.o.Network != "" {
		mac := data[api.DataMAC]
		if mac == "" {
			mac = defaultMAC(spec.Name, g.ip)
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return nil, badData(spec.Name, api.DataMAC, "%q is not a unicast Ethernet address", mac)
		}
		g.mac = hw.String()
	}
	for _, line := range strings.Split(data[api.DataSSHKeys], "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if !safeKeyLine(line) {
			return nil, badData(spec.Name, api.DataSSHKeys, "%.40q… is not a plain authorized_keys line", line)
		}
		g.keys = append(g.keys, line)
	}
	g.userData = data[api.DataUserData]
	return g, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, f)
	}
	return out
}

// safeKeyLine accepts what the controller's key store writes: type,
// base64 blob and a comment of safe characters. Such a line is a plain
// YAML scalar, so it goes into the seed unquoted.
func safeKeyLine(l string) bool {
	f := strings.Split(l, " ")
	if len(f) < 2 || len(f) > 3 || !strings.Contains(f[0], "-") {
		return false
	}
	for _, w := range f {
		for _, r := range w {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("+/=@._-", r)) {
				return false
			}
		}
	}
	return true
}

// defaultMAC is the MAC of a VM whose data names none: 52:54 and the four
// bytes of its IPv4 address (as OpenNebula derives them: unique wherever
// addresses are), else 52:54:00 and three bytes of a hash of its name.
func defaultMAC(name string, ip netip.Addr) string {
	if ip.Is4() {
		b := ip.As4()
		return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	s := h.Sum32()
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(s>>16), byte(s>>8), byte(s))
}

// kernelArgs are what a kernel-boot guest's /init reads: the host name,
// and the address in the kernel's ip= format (the NoCloud network-config
// carries the same for cloud-init images).
func (g *guestConf) kernelArgs(cmdline string) string {
	var b strings.Builder
	b.WriteString(cmdline)
	if !strings.Contains(cmdline, "usher.hostname=") {
		fmt.Fprintf(&b, " usher.hostname=%s", g.hostname)
	}
	switch {
	case g.dhcp:
		b.WriteString(" ip=dhcp")
	case g.ip.IsValid():
		gw := ""
		if g.gateway.IsValid() {
			gw = g.gateway.String()
		}
		mask := net.IP(net.CIDRMask(g.prefix, 32)).String()
		fmt.Fprintf(&b, " ip=%s::%s:%s:%s::off", g.ip, gw, mask, g.hostname)
	}
	if len(g.dns) > 0 {
		s := make([]string, len(g.dns))
		for i, a := range g.dns {
			s[i] = a.String()
		}
		fmt.Fprintf(&b, " usher.dns=%s", strings.Join(s, ","))
	}
	if len(g.search) > 0 {
		fmt.Fprintf(&b, " usher.search=%s", strings.Join(g.search, ","))
	}
	return b.String()
}

// TapName is the host-side device of a VM's NIC on node: "u", three hex
// digits of the node's name and ten of the VM's (15 characters at most, as
// Linux allows). Stable names, unique per node, make a migration's target
// never reuse a name the source still holds (two libvirtds sharing one
// network namespace, as in the test lab, would otherwise race for the
// same vnetN), and give sites names to match in firewall rules.
func TapName(node, vm string) string {
	h := fnv.New64a()
	h.Write([]byte(vm))
	n := fnv.New32a()
	n.Write([]byte(node))
	return fmt.Sprintf("u%03x%010x", n.Sum32()&0xfff, h.Sum64()&0xffffffffff)
}

// nicDef is the guest's NIC on the node's bridge for its VLAN (or the
// configured libvirt network).
func (d *Driver) nicDef(name string, g *guestConf) (*libvirtxml.DomainInterface, error) {
	iface := &libvirtxml.DomainInterface{Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		Target: &libvirtxml.DomainInterfaceTarget{Dev: TapName(d.o.Node, name)}}
	if g.mac != "" {
		iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: g.mac}
	}
	bridge := d.o.Bridge
	if g.vlan != 0 {
		if br, ok := d.o.VLANBridges[g.vlan]; ok {
			bridge = br
		} else if d.o.VLANTagging && d.o.Bridge != "" {
			iface.VLan = &libvirtxml.DomainInterfaceVLan{Tags: []libvirtxml.DomainInterfaceVLanTag{{ID: uint(g.vlan)}}}
			iface.VirtualPort = &libvirtxml.DomainInterfaceVirtualPort{Params: &libvirtxml.DomainInterfaceVirtualPortParams{OpenVSwitch: &libvirtxml.DomainInterfaceVirtualPortParamsOpenVSwitch{}}}
		} else {
			return nil, fmt.Errorf("node %s has no bridge for VLAN %d (lnm.libvirt_vlan_bridges, or lnm.libvirt_vlan_tagging with an Open vSwitch bridge)", d.o.Node, g.vlan)
		}
	}
	switch {
	case bridge != "":
		iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: bridge}}
	case d.o.Network != "":
		iface.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: d.o.Network}}
	default:
		return nil, fmt.Errorf("node %s has no bridge for guests", d.o.Node)
	}
	return iface, nil
}

// ---------------------------------------------------------------------------
// disks: the overlay of the VM's image and its seed

// diskPath is a VM's disk as libvirtd and QEMU see it (the domain XML);
// localDiskPath the same file as this process sees it.
func (d *Driver) diskPath(name, ext string) string { return filepath.Join(d.o.DiskDir, name+ext) }
func (d *Driver) localDiskPath(name, ext string) string {
	return filepath.Join(d.o.LocalDiskDir, name+ext)
}

// OverlayPath is the copy-on-write overlay of a VM started from an image,
// as this process sees it.
func (d *Driver) OverlayPath(name string) string { return d.localDiskPath(name, extOverlay) }

// SeedPath is a VM's cloud-init NoCloud seed, as this process sees it.
func (d *Driver) SeedPath(name string) string { return d.localDiskPath(name, extSeed) }

// makeDisks creates the VM's overlay (qemu-img create with the image as
// backing file) and its seed. Existing files of the name are replaced:
// they are leftovers, since the domain does not exist.
func (d *Driver) makeDisks(ctx context.Context, name string, g *guestConf) error {
	if g.image != nil {
		p := d.OverlayPath(name)
		os.Remove(p)
		cmd := exec.CommandContext(ctx, d.o.QemuImg, "create", "-q", "-f", "qcow2", "-b", g.image.Path, "-F", g.image.Format, p)
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(p)
			return fmt.Errorf("creating the overlay of image %s: %s: %w: %s", g.image.Name, d.o.QemuImg, err, bytes.TrimSpace(out))
		}
	}
	if g.seeded() {
		if err := d.writeSeed(name, g); err != nil {
			d.removeDisks(name)
			return fmt.Errorf("writing the cloud-init seed: %w", err)
		}
	}
	return nil
}

// removeDisks removes the VM's overlay and seed.
func (d *Driver) removeDisks(name string) {
	for _, ext := range []string{extOverlay, extSeed} {
		if err := os.Remove(d.localDiskPath(name, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing a VM's disk", "domain", name, "file", d.localDiskPath(name, ext), "err", err)
		}
	}
}

// seedFiles are the NoCloud files: meta-data (instance id, host name),
// user-data (host name, keys; a policy's user-data as a second part of a
// MIME multipart, which cloud-init merges) and network-config (version 2,
// matched by MAC).
func (g *guestConf) seedFiles(name string) (map[string][]byte, error) {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // JSON strings are YAML
	files := map[string][]byte{}
	files["meta-data"] = fmt.Appendf(nil, "instance-id: %s\nlocal-hostname: %s\n", q(name), g.hostname)
	var ud strings.Builder
	fmt.Fprintf(&ud, "#cloud-config\nhostname: %s\nfqdn: %s\n", g.hostname, g.fqdn)
	if len(g.keys) > 0 {
		ud.WriteString("disable_root: false\nssh_authorized_keys:\n")
		for _, k := range g.keys {
			fmt.Fprintf(&ud, "  - %s\n", k)
		}
	}
	files["user-data"] = []byte(ud.String())
	if g.userData != "" {
		var b bytes.Buffer
		w := multipart.NewWriter(&b)
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\nMIME-Version: 1.0\n\n", w.Boundary())
		for _, part := range []string{ud.String(), g.userData} {
			ct := "text/cloud-config"
			if !strings.HasPrefix(part, "#cloud-config") {
				ct = "text/x-shellscript"
				if !strings.HasPrefix(part, "#!") {
					ct = "text/plain"
				}
			}
			pw, err := w.CreatePart(textproto.MIMEHeader{"Content-Type": {ct + `; charset="utf-8"`}})
			if err != nil {
				return nil, err
			}
			pw.Write([]byte(part))
		}
		w.Close()
		files["user-data"] = b.Bytes()
	}
	if g.nic {
		var nc strings.Builder
		fmt.Fprintf(&nc, "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: %s\n", q(g.mac))
		if g.dhcp {
			nc.WriteString("    dhcp4: true\n")
		} else {
			fmt.Fprintf(&nc, "    addresses: [%s]\n", q(fmt.Sprintf("%s/%d", g.ip, g.prefix)))
			if g.gateway.IsValid() {
				fmt.Fprintf(&nc, "    gateway4: %s\n", q(g.gateway.String()))
			}
		}
		if len(g.dns) > 0 || len(g.search) > 0 {
			nc.WriteString("    nameservers:\n")
			if len(g.dns) > 0 {
				s := make([]string, len(g.dns))
				for i, a := range g.dns {
					s[i] = q(a.String())
				}
				fmt.Fprintf(&nc, "      addresses: [%s]\n", strings.Join(s, ", "))
			}
			if len(g.search) > 0 {
				s := make([]string, len(g.search))
				for i, a := range g.search {
					s[i] = q(a)
				}
				fmt.Fprintf(&nc, "      search: [%s]\n", strings.Join(s, ", "))
			}
		}
		files["network-config"] = []byte(nc.String())
	}
	return files, nil
}

// writeSeed writes the NoCloud seed: an ISO 9660 image with Rock Ridge
// names and the volume label cidata (built with go-diskfs), replacing
// the file atomically.
func (d *Driver) writeSeed(name string, g *guestConf) error {
	files, err := g.seedFiles(name)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(d.o.LocalDiskDir, ".seed-work-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tmp := filepath.Join(work, "seed.iso")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	tree := filepath.Join(work, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	iso, err := iso9660.Create(diskfile.New(f, false), 0, 0, 2048, tree)
	if err != nil {
		return err
	}
	for n, b := range files {
		w, err := iso.OpenFile(n, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		w.Close()
	}
	// The label space-padded, as ISO 9660 wants (go-diskfs pads with NULs).
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: fmt.Sprintf("%-32s", "cidata")}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return os.Rename(tmp, d.SeedPath(name))
}
