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
// Spec and the Options: direct kernel boot (kernel, initrd, cmdline with
// "{name}" replaced by the domain name) or a disk image (qcow2 when the
// name ends in .qcow2, raw otherwise) booted from hd; the serial console
// goes to StateDir/<name>.console.
func (d *Driver) domainDef(spec nodemgr.Spec) (*libvirtxml.Domain, error) {
	mem, vcpus := spec.MemMB, spec.VCPUs
	if mem <= 0 {
		mem = 128
	}
	if vcpus <= 0 {
		vcpus = 1
	}
	kernel := param(spec, "kernel", d.o.Kernel)
	initrd := param(spec, "initrd", d.o.Initrd)
	cmdline := strings.ReplaceAll(param(spec, "cmdline", d.o.Cmdline), "{name}", spec.Name)
	image := param(spec, "image", "")
	if kernel == "" && image == "" {
		return nil, fmt.Errorf("libvirt: %s: no kernel and no image to boot (set Options.Kernel or data kernel/image)", spec.Name)
	}
	boot := &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: d.o.Machine}}
	if kernel != "" {
		boot.Kernel, boot.Initrd, boot.Cmdline = kernel, initrd, cmdline
	} else {
		boot.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "hd"}}
	}
	devs := &libvirtxml.DomainDeviceList{Emulator: d.o.Emulator}
	if image != "" {
		format := "raw"
		if strings.HasSuffix(image, ".qcow2") {
			format = "qcow2"
		}
		devs.Disks = append(devs.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: image}},
			Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
		})
	}
	if d.o.Network != "" {
		iface := libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: d.o.Network}},
			Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		}
		if mac := param(spec, "mac", ""); mac != "" {
			iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: mac}
		}
		devs.Interfaces = append(devs.Interfaces, iface)
	}
	// append='on': a migrated domain's destination QEMU carries on writing
	// the same file instead of truncating it.
	port := uint(0)
	devs.Serials = append(devs.Serials, libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: d.path(spec.Name, extConsole), Append: "on"}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	})
	devs.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio", Stats: &libvirtxml.DomainMemBalloonStats{Period: 5}}
	return &libvirtxml.Domain{
		Type:       d.o.DomainType,
		Name:       spec.Name,
		Memory:     &libvirtxml.DomainMemory{Value: uint(mem), Unit: "MiB"},
		VCPU:       &libvirtxml.DomainVCPU{Value: uint(vcpus)},
		OS:         boot,
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    devs,
	}, nil
}

// domainXML builds the XML of a transient Usher domain (see domainDef).
func (d *Driver) domainXML(spec nodemgr.Spec) (string, error) {
	def, err := d.domainDef(spec)
	if err != nil {
		return "", err
	}
	x, err := def.Marshal()
	if err != nil {
		return "", fmt.Errorf("libvirt: %s: marshalling domain XML: %w", spec.Name, err)
	}
	return x + "\n", nil
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
