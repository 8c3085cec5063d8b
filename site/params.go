package site

import (
	"time"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr/drivers"
)

// Params declares every configuration parameter of a site's processes
// (the controller, an LNM with each VMM driver's parameters, logging) with
// its type, default and help, as the paper asks. `usher controller`,
// `usher lnm`, `usher demo` and the tests' embedded sites all read theirs
// from a set of these.
func Params() *config.Set {
	s := config.New(
		// controller
		config.Param{Key: "controller.listen", Kind: config.String, Default: "127.0.0.1:7070", Help: "address the controller listens on"},
		config.Param{Key: "controller.cert_file", Kind: config.String, Default: "", Help: "controller TLS certificate (from `usher ca issue --role controller`)"},
		config.Param{Key: "controller.key_file", Kind: config.String, Default: "", Help: "controller TLS key"},
		config.Param{Key: "controller.ca_file", Kind: config.String, Default: "", Help: "site CA certificate; LNM certificates must be signed by it"},
		config.Param{Key: "controller.domain", Kind: config.String, Default: "usher.local", Help: "Usher domain: VM names are <name>.<owner>.<domain>; VMs found with this suffix are adopted"},
		config.Param{Key: "controller.state_dir", Kind: config.String, Default: "/var/lib/usher", Help: "where the controller keeps its small persistent state (policy store)"},
		config.Param{Key: "controller.http_listen", Kind: config.String, Default: "", Help: "address of the HTTP API (HTTPS with the controller's certificate; docs/http-api.md); \"\" = off"},
		config.Param{Key: "controller.image_dir", Kind: config.String, Default: "", Help: "the site image store as the controller sees it (base images + NAME.json metadata; the same store LNMs mount as lnm.libvirt_image_dir); \"\" = none"},
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
		config.Param{Key: "controller.max_pending_per_ip", Kind: config.Int, Default: 32, Help: "connections from one address not yet logged in (handshaking or waiting to log in); more are closed at once, so one address's flood cannot delay another's login"},
		config.Param{Key: "controller.login_timeout", Kind: config.Duration, Default: 10 * time.Second, Help: "a client connection that has not logged in this long after its TLS handshake is closed"},
		config.Param{Key: "controller.max_frame_unauth", Kind: config.Int, Default: 64 << 10, Help: "largest frame (bytes) a client may send before it has logged in"},
		config.Param{Key: "controller.frame_timeout", Kind: config.Duration, Default: 30 * time.Second, Help: "how long the rest of a frame may take to arrive once its header has (a peer cannot hold a half-sent frame)"},
		config.Param{Key: "controller.max_partial_mb", Kind: config.Int, Default: 1024, Help: "memory (MiB) all sessions together may hold in frames not yet received whole; each session at most twice the largest frame"},
		config.Param{Key: "controller.login_free", Kind: config.Int, Default: 5, Help: "failed logins per user name and per address before each further one must wait (controller.login_backoff, doubling)"},
		config.Param{Key: "controller.login_backoff", Kind: config.Duration, Default: time.Second, Help: "the first wait after controller.login_free failed logins; it doubles with each further failure"},
		config.Param{Key: "controller.login_backoff_max", Kind: config.Duration, Default: 5 * time.Minute, Help: "the longest wait between failed logins"},
		config.Param{Key: "controller.adopt", Kind: config.String, Default: "recovery", Help: "which nodes are believed about VMs the controller has no record of: recovery (nodes known from before a restart, at their first registration since, and any node registering within controller.grace of the start), never (they go on the unmanaged list), always"},
		config.Param{Key: "controller.advertise", Kind: config.String, Default: "", Help: "address LNMs should connect to, sent in recovery announcements (default: controller.listen)"},
		config.Param{Key: "controller.etcd", Kind: config.Strings, Default: []string{}, Help: "etcd endpoints (https://host:2379,…): run as one of several highly available controllers (docs/ha.md); empty = one controller, state in state_dir"},
		config.Param{Key: "controller.etcd_prefix", Kind: config.String, Default: "", Help: "key prefix of this site in etcd (default /usher/<domain>/)"},
		config.Param{Key: "controller.etcd_ttl", Kind: config.Duration, Default: 5 * time.Second, Help: "leadership lease: a dead leader is replaced about this long after it stops renewing (at least 2s)"},
		config.Param{Key: "controller.advertise_http", Kind: config.String, Default: "", Help: "with controller.etcd: the URL of this controller's HTTP API that standbys redirect API clients to (default https://<advertise host>:<http_listen port>)"},
		config.Param{Key: "controller.leader_probe", Kind: config.Duration, Default: 100 * time.Millisecond, Help: "how often a standby connects to the leader's address (and at once when an LNM or client asks it where the leader is); two refusals in a row after it was seen accepting (its process is gone) revoke its lease, so a standby leads at once instead of after etcd_ttl (0: wait for the lease)"},
		config.Param{Key: "controller.id", Kind: config.String, Default: "", Help: "this controller's name among the highly available ones (default host/advertise)"},
		config.Param{Key: "controller.fence_command", Kind: config.Strings, Default: []string{}, Help: "command that powers a lost node off (e.g. an IPMI power-off), argv with {node}, {address}, {hostname}; exit 0 confirms it; empty = no fencing, hence no failover (docs/maintenance.md)"},
		config.Param{Key: "controller.fence_timeout", Kind: config.Duration, Default: time.Minute, Help: "how long the fencing command has to confirm; later is a failed fence"},
		config.Param{Key: "controller.grace", Kind: config.Duration, Default: 30 * time.Second, Help: "after a restart, how long known LNMs have to reconnect before they are declared failed"},
		config.Param{Key: "controller.event_buffer", Kind: config.Int, Default: 65536, Help: "pushed events queued per client before a lagging client is cut off (the queue takes memory only for what waits)"},
		config.Param{Key: "controller.recovery_gc_percent", Kind: config.Int, Default: 400, Help: "the Go GC percent (GOGC) while a restarted controller rebuilds its state from the LNMs (0 = leave it): the heap only grows then, so collecting it as often as usual is mostly wasted work; the normal setting returns when the state is whole, and controller.memory_limit_mb still bounds the heap"},
		config.Param{Key: "controller.memory_limit_mb", Kind: config.Int, Default: 0, Help: "soft limit of the controller's memory (MiB; 0 = none): the Go runtime collects garbage harder and returns memory to the OS to stay under it (as GOMEMLIMIT, which it overrides)"},
		config.Param{Key: "controller.pprof", Kind: config.String, Default: "", Help: "serve Go pprof profiles on this loopback address (\"\" = off), e.g. 127.0.0.1:6060"},
		// policy
		config.Param{Key: "policy.shipped_dir", Kind: config.String, Default: "", Help: "directory of the shipped policy scripts (empty: the copy built into the binary)"},
		config.Param{Key: "policy.dirs", Kind: config.Strings, Default: []string{}, Help: "site policy directories, watched for changes"},
		config.Param{Key: "policy.enable", Kind: config.Strings, Default: []string{"auth_htpasswd", "authz_owner", "quota", "images", "qos", "place_leastloaded", "drain"}, Help: "shipped scripts to load"},
		config.Param{Key: "policy.watch", Kind: config.Bool, Default: true, Help: "hot-reload scripts when their files change"},
		config.Param{Key: "policy.budget_instructions", Kind: config.Int, Default: 5_000_000, Help: "budget of one handler call: Lua instructions plus the work usher functions do for it (the handler's own work, so a busy machine does not cut a correct handler); about 125 ms of Lua on a fast machine"},
		config.Param{Key: "policy.budget", Kind: config.Duration, Default: 2 * time.Second, Help: "wall-clock backstop of one handler call (time waiting in usher.op, bcrypt or a site module is not charged)"},
		config.Param{Key: "policy.mem_limit_mb", Kind: config.Int, Default: 64, Help: "memory budget of one Lua state (MiB)"},
		config.Param{Key: "policy.store_max_mb", Kind: config.Int, Default: 64, Help: "share of usher.store each script may fill (MiB of keys and values it wrote; a key is at most 256 bytes, a value 64 KiB)"},
		config.Param{Key: "policy.files", Kind: config.Strings, Default: []string{}, Help: "files policies may read (usher.read_htpasswd) besides those their own policy.config section names"},
		config.Param{Key: "policy.modules", Kind: config.Map, Default: map[string]any{}, Help: "site-integration modules for policies (ldap, dns, sql, fs); see docs/site-integration.md"},
		config.Param{Key: "policy.config", Kind: config.Map, Default: map[string]any{}, Help: "per-script configuration sections, e.g. [policy.config.quota] max_vms = 5"},
		// lnm
		config.Param{Key: "lnm.pprof", Kind: config.String, Default: "", Help: "serve Go pprof profiles on this loopback address (\"\" = off)"},
		config.Param{Key: "lnm.name", Kind: config.String, Default: "", Help: "node name (must equal the CN of the LNM certificate)"},
		config.Param{Key: "lnm.controller", Kind: config.String, Default: "127.0.0.1:7070", Help: "controller address host:port; several, comma-separated, for highly available controllers (docs/ha.md)"},
		config.Param{Key: "lnm.server_name", Kind: config.String, Default: "", Help: "name in the controller's certificate (default: host of lnm.controller)"},
		config.Param{Key: "lnm.address", Kind: config.String, Default: "", Help: "address advertised to the controller as this node's migration target"},
		config.Param{Key: "lnm.cert_file", Kind: config.String, Default: "", Help: "LNM certificate (from `usher ca issue --role lnm`)"},
		config.Param{Key: "lnm.key_file", Kind: config.String, Default: "", Help: "LNM key"},
		config.Param{Key: "lnm.ca_file", Kind: config.String, Default: "", Help: "site CA certificate"},
		config.Param{Key: "lnm.metrics_listen", Kind: config.String, Default: "", Help: "address of the LNM's Prometheus metrics (HTTPS with the LNM's certificate, GET /metrics): driver call latencies, node usage; \"\" = off"},
		config.Param{Key: "lnm.metrics_token_file", Kind: config.String, Default: "", Help: "a file holding the bearer token scrapes of lnm.metrics_listen must send (\"\" = none: bind it to a management address)"},
		config.Param{Key: "lnm.recovery_listen", Kind: config.String, Default: ":7071", Help: "where the LNM listens for a restarted controller's recovery announcement (\"\" = off)"},
		config.Param{Key: "lnm.keepalive", Kind: config.Duration, Default: 5 * time.Second, Help: "yamux keepalive interval on the link to the controller"},
		config.Param{Key: "lnm.write_timeout", Kind: config.Duration, Default: 10 * time.Second, Help: "a write or keepalive ping to the controller that takes longer fails the link (then the LNM reconnects)"},
		config.Param{Key: "lnm.scan_interval", Kind: config.Duration, Default: 10 * time.Second, Help: "how often the LNM scans for missing or unexpected VMs"},
		// logging
		config.Param{Key: "log.level", Kind: config.String, Default: "info", Help: "log level: debug, info, warn, error"},
		config.Param{Key: "log.format", Kind: config.String, Default: "text", Help: "log format: text or json"},
	)
	s.Add(drivers.Params()...)
	return s
}
