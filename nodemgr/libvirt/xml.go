package libvirt

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/usher-vm/usher/core"
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

func (d *Driver) readOff(name string) core.VMState {
	b, err := os.ReadFile(d.path(name, extOff))
	if err != nil {
		return ""
	}
	switch s := core.VMState(strings.TrimSpace(string(b))); s {
	case core.StateShutoff, core.StateCrashed:
		return s
	}
	return core.StateShutoff
}

func (d *Driver) writeOff(name string, st core.VMState) error {
	return writeAtomic(d.path(name, extOff), []byte(string(st)+"\n"))
}

func writeAtomic(p string, b []byte) error { return renameio.WriteFile(p, b, 0o644) }

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

func param(spec nodemgr.Spec, key, def string) string {
	if v, ok := spec.Args[key]; ok && v != "" {
		return v
	}
	if v, ok := spec.Data[key]; ok && v != "" {
		return v
	}
	return def
}

// domainXML builds the XML of a transient Usher domain.
func (d *Driver) domainXML(spec nodemgr.Spec) (string, error) {
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
		return "", fmt.Errorf("libvirt: %s: no kernel and no image to boot (set Options.Kernel or data kernel/image)", spec.Name)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<domain type='%s'>\n", xmlEscape(d.o.DomainType))
	fmt.Fprintf(&b, "  <name>%s</name>\n", xmlEscape(spec.Name))
	fmt.Fprintf(&b, "  <memory unit='MiB'>%d</memory>\n  <vcpu>%d</vcpu>\n", mem, vcpus)
	fmt.Fprintf(&b, "  <os>\n    <type arch='x86_64' machine='%s'>hvm</type>\n", xmlEscape(d.o.Machine))
	if kernel != "" {
		fmt.Fprintf(&b, "    <kernel>%s</kernel>\n", xmlEscape(kernel))
		if initrd != "" {
			fmt.Fprintf(&b, "    <initrd>%s</initrd>\n", xmlEscape(initrd))
		}
		fmt.Fprintf(&b, "    <cmdline>%s</cmdline>\n", xmlEscape(cmdline))
	} else {
		b.WriteString("    <boot dev='hd'/>\n")
	}
	b.WriteString("  </os>\n  <features><acpi/></features>\n")
	b.WriteString("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n")
	b.WriteString("  <devices>\n")
	if d.o.Emulator != "" {
		fmt.Fprintf(&b, "    <emulator>%s</emulator>\n", xmlEscape(d.o.Emulator))
	}
	if image != "" {
		format := "raw"
		if strings.HasSuffix(image, ".qcow2") {
			format = "qcow2"
		}
		fmt.Fprintf(&b, "    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>\n",
			format, xmlEscape(image))
	}
	if d.o.Network != "" {
		fmt.Fprintf(&b, "    <interface type='network'><source network='%s'/>", xmlEscape(d.o.Network))
		if mac := param(spec, "mac", ""); mac != "" {
			fmt.Fprintf(&b, "<mac address='%s'/>", xmlEscape(mac))
		}
		b.WriteString("<model type='virtio'/></interface>\n")
	}
	// append='on': a migrated domain's destination QEMU carries on writing
	// the same file instead of truncating it.
	fmt.Fprintf(&b, "    <serial type='file'><source path='%s' append='on'/><target port='0'/></serial>\n",
		xmlEscape(d.path(spec.Name, extConsole)))
	b.WriteString("    <memballoon model='virtio'><stats period='5'/></memballoon>\n")
	b.WriteString("  </devices>\n</domain>\n")
	return b.String(), nil
}

// xmlSize reads memory and vCPUs from a saved domain XML.
func xmlSize(b []byte) (memMB, vcpus int) {
	var x struct {
		Memory struct {
			Unit  string `xml:"unit,attr"`
			Value string `xml:",chardata"`
		} `xml:"memory"`
		VCPU string `xml:"vcpu"`
	}
	if xml.Unmarshal(b, &x) != nil {
		return 0, 0
	}
	v, _ := strconv.ParseInt(strings.TrimSpace(x.Memory.Value), 10, 64)
	switch strings.ToLower(x.Memory.Unit) {
	case "", "k", "kib":
		memMB = int(v / 1024)
	case "m", "mib":
		memMB = int(v)
	case "g", "gib":
		memMB = int(v * 1024)
	case "b", "bytes":
		memMB = int(v >> 20)
	}
	vcpus, _ = strconv.Atoi(strings.TrimSpace(x.VCPU))
	return memMB, vcpus
}
