package drivers

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/sim"
)

// Config reads a driver's parameters (a *config.Set does).
type Config interface {
	String(key string) string
	Int(key string) int
	Duration(key string) time.Duration
	Bool(key string) bool
	Strings(key string) []string
}

// Kind is one VMM driver.
type Kind struct {
	Name   string
	Help   string
	Params []config.Param
	// New makes the driver of node (advertising address, "" for the
	// driver's own) from its parameters.
	New func(ctx context.Context, node, address string, c Config, log *slog.Logger) (nodemgr.Driver, error)
}

// Kinds lists every driver.
func Kinds() []Kind {
	return []Kind{
		{
			Name: "sim",
			Help: "the simulated hypervisor: the embedded default for demos and scale",
			Params: []config.Param{
				{Key: "lnm.sim_state_file", Kind: config.String, Default: "", Help: "sim driver: file keeping the simulated VMs (they outlive the LNM)"},
				{Key: "lnm.sim_cpus", Kind: config.Int, Default: 16, Help: "sim driver: vCPU capacity"},
				{Key: "lnm.sim_host_cpus", Kind: config.Int, Default: 0, Help: "sim driver: how many of sim_cpus can be guaranteed (host CPUs under overcommit; 0 = all)"},
				{Key: "lnm.sim_mem_mb", Kind: config.Int, Default: 65536, Help: "sim driver: memory capacity (MiB)"},
				{Key: "lnm.sim_boot_delay", Kind: config.Duration, Default: time.Duration(0), Help: "sim driver: time from start to running"},
				{Key: "lnm.sim_event_buffer", Kind: config.Int, Default: 0, Help: "sim driver: events buffered (0: 1024; negative: none, scans only)"},
			},
			New: func(ctx context.Context, node, address string, c Config, log *slog.Logger) (nodemgr.Driver, error) {
				return sim.New(sim.Options{Node: node, Address: address, CPUs: c.Int("lnm.sim_cpus"), HostCPUs: c.Int("lnm.sim_host_cpus"), MemMB: c.Int("lnm.sim_mem_mb"),
					BootDelay: c.Duration("lnm.sim_boot_delay"), StateFile: c.String("lnm.sim_state_file"), EventBuffer: c.Int("lnm.sim_event_buffer")})
			},
		},
		{
			Name: "libvirt",
			Help: "real QEMU/KVM through libvirtd's socket",
			Params: []config.Param{
				{Key: "lnm.libvirt_socket", Kind: config.String, Default: "/var/run/libvirt/libvirt-sock", Help: "libvirt driver: libvirtd unix socket"},
				{Key: "lnm.libvirt_uri", Kind: config.String, Default: "", Help: "libvirt driver: connect by URI instead of the socket (qemu+tcp://host/system, qemu+tls://…)"},
				{Key: "lnm.libvirt_migration_uri", Kind: config.String, Default: "", Help: "libvirt driver: this host's libvirt URI as peers reach it; advertised as the migration target"},
				{Key: "lnm.libvirt_domain_type", Kind: config.String, Default: "kvm", Help: "libvirt driver: domain type, kvm or qemu (software emulation)"},
				{Key: "lnm.libvirt_state_dir", Kind: config.String, Default: "/var/lib/usher/libvirt", Help: "libvirt driver: hibernation files, domain XML and serial consoles"},
				{Key: "lnm.libvirt_kernel", Kind: config.String, Default: "", Help: "libvirt driver: default guest kernel (a VM's data may choose another: kernel=…)"},
				{Key: "lnm.libvirt_initrd", Kind: config.String, Default: "", Help: "libvirt driver: default guest initramfs"},
				{Key: "lnm.libvirt_cmdline", Kind: config.String, Default: "console=ttyS0", Help: "libvirt driver: default kernel command line ({name} = the VM name)"},
				{Key: "lnm.libvirt_network", Kind: config.String, Default: "", Help: "libvirt driver: libvirt network to attach guests to when no bridge is set (\"\" = none)"},
				{Key: "lnm.libvirt_bridge", Kind: config.String, Default: "", Help: "libvirt driver: host bridge guests' NICs join (a VM gets a NIC when its data has an address, ip=…, or net=dhcp)"},
				{Key: "lnm.libvirt_vlan_bridges", Kind: config.Strings, Default: []string{}, Help: "libvirt driver: bridge per VLAN, as VLAN=BRIDGE (10=br10,20=br20); a VM's data vlan=N picks one"},
				{Key: "lnm.libvirt_vlan_tagging", Kind: config.Bool, Default: false, Help: "libvirt driver: tag a VLAN without its own bridge on lnm.libvirt_bridge (an Open vSwitch bridge)"},
				{Key: "lnm.libvirt_image_dir", Kind: config.String, Default: "", Help: "libvirt driver: the site image store as this node sees it (the same path on every host of a migration domain); \"\" = no images"},
				{Key: "lnm.libvirt_disk_dir", Kind: config.String, Default: "", Help: "libvirt driver: where each VM's overlay and cloud-init seed live (default: the state dir)"},
				{Key: "lnm.libvirt_disk_migration", Kind: config.String, Default: "shared", Help: "libvirt driver: shared (the disk dir is storage all hosts see at one path, and libvirt can tell), shared-unsafe (shared, but libvirt cannot tell: migrate with VIR_MIGRATE_UNSAFE) or copy (local disks at the same path on every host: the target makes the overlay, libvirt copies its data)"},
				{Key: "lnm.libvirt_local_disk_dir", Kind: config.String, Default: "", Help: "libvirt driver: where the LNM finds the disk dir when libvirtd sees it under another path (libvirtd in another mount namespace); default: the disk dir"},
				{Key: "lnm.libvirt_vcpu_overcommit", Kind: config.Int, Default: 1, Help: "libvirt driver: vCPUs offered per host CPU (what placement counts); one VM never gets more vCPUs than the host has CPUs"},
				{Key: "lnm.libvirt_shutdown_timeout", Kind: config.Duration, Default: 60 * time.Second, Help: "libvirt driver: graceful shutdown wait before failing (or destroying, when forced)"},
			},
			New: func(ctx context.Context, node, address string, c Config, log *slog.Logger) (nodemgr.Driver, error) {
				vlanBridges, err := ParseVLANBridges(c.Strings("lnm.libvirt_vlan_bridges"))
				if err != nil {
					return nil, err
				}
				return libvirt.New(ctx, libvirt.Options{Node: node, Address: address, Socket: c.String("lnm.libvirt_socket"), URI: c.String("lnm.libvirt_uri"),
					MigrationURI: c.String("lnm.libvirt_migration_uri"), DomainType: c.String("lnm.libvirt_domain_type"),
					Kernel: c.String("lnm.libvirt_kernel"), Initrd: c.String("lnm.libvirt_initrd"), Cmdline: c.String("lnm.libvirt_cmdline"),
					StateDir: c.String("lnm.libvirt_state_dir"), Network: c.String("lnm.libvirt_network"),
					Bridge: c.String("lnm.libvirt_bridge"), VLANBridges: vlanBridges, VLANTagging: c.Bool("lnm.libvirt_vlan_tagging"),
					VCPUOvercommit: c.Int("lnm.libvirt_vcpu_overcommit"),
					ImageDir:       c.String("lnm.libvirt_image_dir"), DiskDir: c.String("lnm.libvirt_disk_dir"), DiskMigration: c.String("lnm.libvirt_disk_migration"),
					LocalDiskDir:    c.String("lnm.libvirt_local_disk_dir"),
					ShutdownTimeout: c.Duration("lnm.libvirt_shutdown_timeout"), Logger: log.With("component", "libvirt")})
			},
		},
	}
}

// Names lists the drivers' names.
func Names() []string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, k.Name)
	}
	return out
}

// Lookup finds a driver by name.
func Lookup(name string) (Kind, error) {
	for _, k := range Kinds() {
		if k.Name == name {
			return k, nil
		}
	}
	return Kind{}, fmt.Errorf("lnm.driver %q: want one of %s", name, strings.Join(Names(), ", "))
}

// Params are every driver's parameters, and lnm.driver.
func Params() []config.Param {
	ps := []config.Param{{Key: "lnm.driver", Kind: config.String, Default: "sim", Help: "VMM driver: " + strings.Join(Names(), " or ")}}
	for _, k := range Kinds() {
		ps = append(ps, k.Params...)
	}
	return ps
}

// ParseVLANBridges reads lnm.libvirt_vlan_bridges: VLAN=BRIDGE entries.
func ParseVLANBridges(list []string) (map[int]string, error) {
	m := map[int]string{}
	for _, e := range list {
		v, br, ok := strings.Cut(strings.TrimSpace(e), "=")
		id, err := strconv.Atoi(v)
		if !ok || err != nil || id < 1 || id > 4094 || br == "" || strings.ContainsAny(br, "/ ") {
			return nil, fmt.Errorf("lnm.libvirt_vlan_bridges: %q: want VLAN=BRIDGE with a VLAN id from 1 to 4094", e)
		}
		if _, dup := m[id]; dup {
			return nil, fmt.Errorf("lnm.libvirt_vlan_bridges: VLAN %d given twice", id)
		}
		m[id] = br
	}
	return m, nil
}
