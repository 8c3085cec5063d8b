package libvirt

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/usher-vm/usher/api"

	"github.com/google/renameio/v2"
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/nodemgr"
)

// Files the driver keeps in StateDir, per domain.
const (
	extXML     = ".xml"     // the XML the domain was created from (cycle)
	extSave    = ".save"    // hibernated memory image (DomainSave)
	extOff     = ".off"     // "shutoff" or "crashed": stopped, still an Usher VM
	extConsole = ".console" // serial console, written by QEMU
)

func (d *Driver) path(name, ext string) string { return filepath.Join(d.o.StateDir, name+ext) }

// ConsolePath is where a domain started by this driver writes its serial
// console.
func (d *Driver) ConsolePath(name string) string { return d.path(name, extConsole) }

// SavePath is the hibernation file of a domain.
func (d *Driver) SavePath(name string) string { return d.path(name, extSave) }

func (d *Driver) managed(name string) bool { return fileExists(d.path(name, extXML)) }

func (d *Driver) readOff(name string) api.VMState {
	b, err := os.ReadFile(d.path(name, extOff))
	if err != nil {
		return ""
	}
	switch s := api.VMState(strings.TrimSpace(string(b))); s {
	case api.StateShutoff, api.StateCrashed:
		return s
	}
	return api.StateShutoff
}

func (d *Driver) writeOff(name string, st api.VMState) error {
	return writeAtomic(d.path(name, extOff), []byte(string(st)+"\n"))
}

func writeAtomic(p string, b []byte) error { return renameio.WriteFile(p, b, 0o644) }

func param(spec nodemgr.Spec, key, def string) string {
	if v, ok := spec.Data[key]; ok && v != "" {
		return v
	}
	return def
}

// domainDef builds the definition of a transient Usher domain from the
// Spec, its guest configuration and the Options. Boot: direct kernel boot
// (kernel, initrd, cmdline with "{name}" replaced by the domain name and
// the guest's host name and address appended; from the data, else the
// image's metadata, else the Options) or the image's own boot loader.
// Disks: the overlay of the image (vda), the NoCloud seed (read-only).
// NIC: on the node's bridge for the guest's VLAN, with its MAC. The serial
// console is a pty (ush console opens it) logged, appending, to
// StateDir/<name>.console.
func (d *Driver) domainDef(spec nodemgr.Spec, g *guestConf) (*libvirtxml.Domain, error) {
	mem, vcpus := spec.MemMB, spec.VCPUs
	if mem <= 0 {
		mem = 128
	}
	if vcpus <= 0 {
		vcpus = 1
	}
	kernel, initrd, cmdline := d.o.Kernel, d.o.Initrd, d.o.Cmdline
	if im := g.image; im != nil {
		kernel, initrd = im.Kernel, im.Initrd
		if im.Cmdline != "" {
			cmdline = im.Cmdline
		}
	}
	kernel, initrd = param(spec, "kernel", kernel), param(spec, "initrd", initrd)
	cmdline = strings.ReplaceAll(param(spec, "cmdline", cmdline), "{name}", spec.Name)
	if kernel == "" && g.image == nil {
		return nil, fmt.Errorf("libvirt: %s: no kernel and no image to boot (set Options.Kernel, or data image=NAME)", spec.Name)
	}
	boot := &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: d.o.Machine}}
	if kernel != "" {
		if g.seeded() {
			cmdline = g.kernelArgs(cmdline)
		}
		boot.Kernel, boot.Initrd, boot.Cmdline = kernel, initrd, strings.TrimSpace(cmdline)
	} else {
		boot.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "hd"}}
	}
	devs := &libvirtxml.DomainDeviceList{Emulator: d.o.Emulator}
	disk := func(file, format, dev string, ro bool) {
		dd := libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: file}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: "virtio"},
		}
		if ro {
			dd.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
		}
		devs.Disks = append(devs.Disks, dd)
	}
	dev := 'a'
	if g.image != nil {
		disk(d.diskPath(spec.Name, extOverlay), "qcow2", "vda", false)
		dev++
	}
	if g.seeded() {
		disk(d.diskPath(spec.Name, extSeed), "raw", "vd"+string(dev), true)
	}
	if g.nic || d.o.Network != "" {
		iface, err := d.nicDef(spec.Name, g)
		if err != nil {
			return nil, fmt.Errorf("libvirt: %s: %w", spec.Name, err)
		}
		devs.Interfaces = append(devs.Interfaces, *iface)
	}
	// append='on': a migrated domain's destination QEMU carries on writing
	// the same file instead of truncating it.
	port := uint(0)
	devs.Serials = append(devs.Serials, libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
		Log:    &libvirtxml.DomainChardevLog{File: d.path(spec.Name, extConsole), Append: "on"},
	})
	devs.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio", Stats: &libvirtxml.DomainMemBalloonStats{Period: 5}}
	return &libvirtxml.Domain{
		Type:       d.o.DomainType,
		Name:       spec.Name,
		Memory:     &libvirtxml.DomainMemory{Value: uint(mem), Unit: "MiB"},
		VCPU:       &libvirtxml.DomainVCPU{Value: uint(vcpus)},
		CPUTune:    cpuTune(spec, vcpus),
		OS:         boot,
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    devs,
	}, nil
}

// CPU weights (libvirt <cputune><shares>, cgroup cpu.weight): under
// contention a guaranteed VM's vCPUs weigh 512 times a best-effort VM's,
// so it gets its CPUs (placement never puts more guaranteed vCPUs on a
// node than it has host CPUs) and best-effort VMs share what is left,
// equally among themselves (the weights of Kubernetes' Guaranteed and
// BestEffort classes).
const (
	sharesGuaranteed = 1024
	sharesBestEffort = 2
)

// cpuTune is the CPU weight of a guest by its class (data qos).
func cpuTune(spec nodemgr.Spec, vcpus int) *libvirtxml.DomainCPUTune {
	per := sharesBestEffort
	if api.Guaranteed(spec.Data) {
		per = sharesGuaranteed
	}
	return &libvirtxml.DomainCPUTune{Shares: &libvirtxml.DomainCPUTuneShares{Value: uint(min(per*vcpus, 262144))}}
}

// specDef checks a Spec's guest configuration and builds its domain.
func (d *Driver) specDef(spec nodemgr.Spec) (*libvirtxml.Domain, *guestConf, error) {
	g, err := d.guestConfig(spec)
	if err != nil {
		return nil, nil, err
	}
	def, err := d.domainDef(spec, g)
	return def, g, err
}

// domainXML builds the XML of a transient Usher domain (see domainDef).
func (d *Driver) domainXML(spec nodemgr.Spec) (string, *guestConf, error) {
	def, g, err := d.specDef(spec)
	if err != nil {
		return "", nil, err
	}
	x, err := def.Marshal()
	if err != nil {
		return "", nil, fmt.Errorf("libvirt: %s: marshalling domain XML: %w", spec.Name, err)
	}
	return x + "\n", g, nil
}

// domainSize reads memory (in MiB) and vCPUs from a saved domain XML,
// ours or one libvirt produced (adopted domains).
func domainSize(x []byte) (memMB, vcpus int, err error) {
	var def libvirtxml.Domain
	if err := def.Unmarshal(string(x)); err != nil {
		return 0, 0, fmt.Errorf("parsing domain XML: %w", err)
	}
	if def.Memory != nil {
		b, err := scaleBytes(uint64(def.Memory.Value), def.Memory.Unit)
		if err != nil {
			return 0, 0, fmt.Errorf("domain memory: %w", err)
		}
		memMB = int(b >> 20)
	}
	if def.VCPU != nil {
		vcpus = int(def.VCPU.Value)
	}
	return memMB, vcpus, nil
}

// scaleBytes converts a libvirt scaled integer to bytes, with libvirt's
// units: "" and k/KiB are 1024, KB is 1000, b/bytes are bytes, and so on up
// to exbibytes (case-insensitive, as libvirt reads them).
func scaleBytes(v uint64, unit string) (uint64, error) {
	u := strings.ToLower(unit)
	switch u {
	case "":
		return v << 10, nil
	case "b", "byte", "bytes":
		return v, nil
	}
	exp := strings.IndexByte("kmgtpe", u[0]) + 1
	if exp == 0 {
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	var base uint64
	switch u[1:] {
	case "", "ib":
		base = 1024
	case "b":
		base = 1000
	default:
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	for range exp {
		if v > math.MaxUint64/base {
			return 0, fmt.Errorf("%d %s overflows", v, unit)
		}
		v *= base
	}
	return v, nil
}
