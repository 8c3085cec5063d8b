package main

import (
	"time"

	"github.com/usher-vm/usher/core/config"
)

// params declares every configuration parameter of the usher binary with
// its type, default and help, as the paper asks.
func params() *config.Set {
	return config.New(
		// controller
		config.Param{Key: "controller.listen", Kind: config.String, Default: "127.0.0.1:7070", Help: "address the controller listens on"},
		config.Param{Key: "controller.cert_file", Kind: config.String, Default: "", Help: "controller TLS certificate (from `usher ca issue --role controller`)"},
		config.Param{Key: "controller.key_file", Kind: config.String, Default: "", Help: "controller TLS key"},
		config.Param{Key: "controller.ca_file", Kind: config.String, Default: "", Help: "site CA certificate; LNM certificates must be signed by it"},
		config.Param{Key: "controller.domain", Kind: config.String, Default: "usher.local", Help: "Usher domain: VM names are <name>.<owner>.<domain>; VMs found with this suffix are adopted"},
		config.Param{Key: "controller.state_dir", Kind: config.String, Default: "/var/lib/usher", Help: "where the controller keeps its small persistent state (policy store)"},
		config.Param{Key: "controller.report_interval", Kind: config.Duration, Default: 5 * time.Second, Help: "how often LNMs report usage figures"},
		config.Param{Key: "controller.start_timeout", Kind: config.Duration, Default: 5 * time.Minute, Help: "how long an LNM may take to start one batch of VMs"},
		config.Param{Key: "controller.op_timeout", Kind: config.Duration, Default: 5 * time.Minute, Help: "how long an LNM may take for an operation or migration batch"},
		config.Param{Key: "controller.default_mem_mb", Kind: config.Int, Default: 128, Help: "memory of a VM whose request names none (MiB)"},
		config.Param{Key: "controller.default_vcpus", Kind: config.Int, Default: 1, Help: "vCPUs of a VM whose request names none"},
		config.Param{Key: "controller.max_request_vms", Kind: config.Int, Default: 100000, Help: "largest VM list one request may carry"},
		config.Param{Key: "controller.owner_only", Kind: config.Bool, Default: true, Help: "baseline: non-admins see and act on their own VMs only (policies may restrict further)"},
		config.Param{Key: "controller.keepalive", Kind: config.Duration, Default: 5 * time.Second, Help: "yamux keepalive interval on every link"},
		config.Param{Key: "controller.write_timeout", Kind: config.Duration, Default: 10 * time.Second, Help: "a write or keepalive ping that takes longer fails the link"},
		config.Param{Key: "controller.max_handshaking", Kind: config.Int, Default: 256, Help: "connections allowed mid-TLS-handshake at once; four times as many more are accepted and wait, the rest wait in the kernel's accept queue"},
		config.Param{Key: "controller.max_per_ip", Kind: config.Int, Default: 20000, Help: "sessions allowed per remote IP"},
		config.Param{Key: "controller.max_streams", Kind: config.Int, Default: 512, Help: "concurrent calls per session"},
		config.Param{Key: "controller.advertise", Kind: config.String, Default: "", Help: "address LNMs should connect to, sent in recovery announcements (default: controller.listen)"},
		config.Param{Key: "controller.grace", Kind: config.Duration, Default: 30 * time.Second, Help: "after a restart, how long known LNMs have to reconnect before they are declared failed"},
		config.Param{Key: "controller.event_buffer", Kind: config.Int, Default: 65536, Help: "pushed events queued per client before a lagging client is cut off (the queue takes memory only for what waits)"},
		config.Param{Key: "controller.recovery_gc_percent", Kind: config.Int, Default: 400, Help: "the Go GC percent (GOGC) while a restarted controller rebuilds its state from the LNMs (0 = leave it): the heap only grows then, so collecting it as often as usual is mostly wasted work; the normal setting returns when the state is whole, and controller.memory_limit_mb still bounds the heap"},
		config.Param{Key: "controller.memory_limit_mb", Kind: config.Int, Default: 0, Help: "soft limit of the controller's memory (MiB; 0 = none): the Go runtime collects garbage harder and returns memory to the OS to stay under it (as GOMEMLIMIT, which it overrides)"},
		config.Param{Key: "controller.pprof", Kind: config.String, Default: "", Help: "serve Go pprof profiles on this loopback address (\"\" = off), e.g. 127.0.0.1:6060"},
		// policy
		config.Param{Key: "policy.shipped_dir", Kind: config.String, Default: "", Help: "directory of the shipped policy scripts (empty: the copy built into the binary)"},
		config.Param{Key: "policy.dirs", Kind: config.Strings, Default: []string{}, Help: "site policy directories, watched for changes"},
		config.Param{Key: "policy.enable", Kind: config.Strings, Default: []string{"auth_htpasswd", "authz_owner", "quota", "place_leastloaded"}, Help: "shipped scripts to load"},
		config.Param{Key: "policy.watch", Kind: config.Bool, Default: true, Help: "hot-reload scripts when their files change"},
		config.Param{Key: "policy.budget", Kind: config.Duration, Default: 100 * time.Millisecond, Help: "time budget of one handler call"},
		config.Param{Key: "policy.mem_limit_mb", Kind: config.Int, Default: 64, Help: "memory budget of one Lua state (MiB)"},
		config.Param{Key: "policy.modules", Kind: config.Map, Default: map[string]any{}, Help: "site-integration modules for policies (ldap, dns, sql, fs); see docs/site-integration.md"},
		config.Param{Key: "policy.config", Kind: config.Map, Default: map[string]any{}, Help: "per-script configuration sections, e.g. [policy.config.quota] max_vms = 5"},
		// lnm
		config.Param{Key: "lnm.pprof", Kind: config.String, Default: "", Help: "serve Go pprof profiles on this loopback address (\"\" = off)"},
		config.Param{Key: "lnm.name", Kind: config.String, Default: "", Help: "node name (must equal the CN of the LNM certificate)"},
		config.Param{Key: "lnm.controller", Kind: config.String, Default: "127.0.0.1:7070", Help: "controller address"},
		config.Param{Key: "lnm.server_name", Kind: config.String, Default: "", Help: "name in the controller's certificate (default: host of lnm.controller)"},
		config.Param{Key: "lnm.address", Kind: config.String, Default: "", Help: "address advertised to the controller as this node's migration target"},
		config.Param{Key: "lnm.cert_file", Kind: config.String, Default: "", Help: "LNM certificate (from `usher ca issue --role lnm`)"},
		config.Param{Key: "lnm.key_file", Kind: config.String, Default: "", Help: "LNM key"},
		config.Param{Key: "lnm.ca_file", Kind: config.String, Default: "", Help: "site CA certificate"},
		config.Param{Key: "lnm.recovery_listen", Kind: config.String, Default: ":7071", Help: "where the LNM listens for a restarted controller's recovery announcement (\"\" = off)"},
		config.Param{Key: "lnm.keepalive", Kind: config.Duration, Default: 5 * time.Second, Help: "yamux keepalive interval on the link to the controller"},
		config.Param{Key: "lnm.write_timeout", Kind: config.Duration, Default: 10 * time.Second, Help: "a write or keepalive ping to the controller that takes longer fails the link (then the LNM reconnects)"},
		config.Param{Key: "lnm.driver", Kind: config.String, Default: "sim", Help: "VMM driver: sim or libvirt"},
		config.Param{Key: "lnm.scan_interval", Kind: config.Duration, Default: 10 * time.Second, Help: "how often the LNM scans for missing or unexpected VMs"},
		config.Param{Key: "lnm.sim_state_file", Kind: config.String, Default: "", Help: "sim driver: file keeping the simulated VMs (they outlive the LNM)"},
		config.Param{Key: "lnm.sim_cpus", Kind: config.Int, Default: 16, Help: "sim driver: vCPU capacity"},
		config.Param{Key: "lnm.sim_mem_mb", Kind: config.Int, Default: 65536, Help: "sim driver: memory capacity (MiB)"},
		config.Param{Key: "lnm.sim_boot_delay", Kind: config.Duration, Default: time.Duration(0), Help: "sim driver: time from start to running"},
		config.Param{Key: "lnm.libvirt_socket", Kind: config.String, Default: "/var/run/libvirt/libvirt-sock", Help: "libvirt driver: libvirtd unix socket"},
		config.Param{Key: "lnm.libvirt_uri", Kind: config.String, Default: "", Help: "libvirt driver: connect by URI instead of the socket (qemu+tcp://host/system, qemu+tls://…)"},
		config.Param{Key: "lnm.libvirt_migration_uri", Kind: config.String, Default: "", Help: "libvirt driver: this host's libvirt URI as peers reach it; advertised as the migration target"},
		config.Param{Key: "lnm.libvirt_domain_type", Kind: config.String, Default: "kvm", Help: "libvirt driver: domain type, kvm or qemu (software emulation)"},
		config.Param{Key: "lnm.libvirt_state_dir", Kind: config.String, Default: "/var/lib/usher/libvirt", Help: "libvirt driver: hibernation files, domain XML and serial consoles"},
		config.Param{Key: "lnm.libvirt_kernel", Kind: config.String, Default: "", Help: "libvirt driver: default guest kernel (requests may choose another with kernel=…)"},
		config.Param{Key: "lnm.libvirt_initrd", Kind: config.String, Default: "", Help: "libvirt driver: default guest initramfs"},
		config.Param{Key: "lnm.libvirt_cmdline", Kind: config.String, Default: "console=ttyS0", Help: "libvirt driver: default kernel command line ({name} = the VM name)"},
		config.Param{Key: "lnm.libvirt_network", Kind: config.String, Default: "", Help: "libvirt driver: libvirt network to attach guests to (\"\" = none)"},
		config.Param{Key: "lnm.libvirt_shutdown_timeout", Kind: config.Duration, Default: 60 * time.Second, Help: "libvirt driver: graceful shutdown wait before failing (or destroying with force=1)"},
		// logging
		config.Param{Key: "log.level", Kind: config.String, Default: "info", Help: "log level: debug, info, warn, error"},
		config.Param{Key: "log.format", Kind: config.String, Default: "text", Help: "log format: text or json"},
	)
}
