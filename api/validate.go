package api

import (
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Bounds of every field of both links. A value outside them is refused
// with ErrBadRequest naming the field, before it touches any state.
const (
	// MaxIDLen bounds a request id (characters A-Z a-z 0-9 . _ : -).
	MaxIDLen = 64
	// MaxRequestVMs is the hard cap of VMs in one request (the
	// controller's own limit, controller.max_request_vms, is at most this).
	MaxRequestVMs = 1_000_000
	// MaxClusterLen bounds a cluster name: VM names are the cluster and
	// an index, and must fit a DNS label of 63 characters (56 leaves room
	// for an index of up to 9,999,999).
	MaxClusterLen = 56
	// MaxVMNameLen bounds a full VM name (a DNS name).
	MaxVMNameLen = 253
	// MaxLNMs bounds the nodes suggested in one request.
	MaxLNMs = 10_000
	// MaxArgs, MaxArgKey and MaxArgValue bound a request's args.
	MaxArgs     = 32
	MaxArgKey   = 64
	MaxArgValue = 1024
	// MaxData, MaxDataKey and MaxDataValue bound a VM's policy data, and
	// MaxDataBytes all of it together (it is copied into every list,
	// event and node cache).
	MaxData      = 64
	MaxDataKey   = 64
	MaxDataValue = 4096
	MaxDataBytes = 16 << 10
	// MaxMemMB and MaxVCPUs bound one VM's allocation.
	MaxMemMB = 1 << 24
	MaxVCPUs = 4096
	// MaxPassword is the longest password the authentication chain takes:
	// bcrypt uses 72 bytes and would silently ignore the rest.
	MaxPassword = 72
	// MaxPage bounds one page of a paged list.
	MaxPage = 100_000
)

func bad(format string, args ...any) error { return Errorf(ErrBadRequest, format, args...) }

// ValidID checks a request id.
func ValidID(id string) error {
	if len(id) > MaxIDLen {
		return bad("id: %d characters (at most %d)", len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '.', b == '_', b == ':', b == '-':
		default:
			return bad("id: character %q at %d (allowed: letters, digits, . _ : -)", b, i)
		}
	}
	return nil
}

// ValidArgs checks a request's args.
func ValidArgs(m StringMap) error {
	if len(m) > MaxArgs {
		return bad("args: %d entries (at most %d)", len(m), MaxArgs)
	}
	for k, v := range m {
		if k == "" || len(k) > MaxArgKey {
			return bad("args: key %.20q: 1 to %d bytes", k, MaxArgKey)
		}
		if len(v) > MaxArgValue {
			return bad("args[%.20q]: %d bytes (at most %d)", k, len(v), MaxArgValue)
		}
	}
	return nil
}

// ValidData checks a VM's policy data.
func ValidData(m StringMap) error {
	if len(m) > MaxData {
		return fmt.Errorf("data: %d entries (at most %d)", len(m), MaxData)
	}
	total := 0
	for k, v := range m {
		if k == "" || len(k) > MaxDataKey {
			return fmt.Errorf("data: key %.20q: 1 to %d bytes", k, MaxDataKey)
		}
		if len(v) > MaxDataValue {
			return fmt.Errorf("data[%.20q]: %d bytes (at most %d)", k, len(v), MaxDataValue)
		}
		total += len(k) + len(v)
	}
	if total > MaxDataBytes {
		return fmt.Errorf("data: %d bytes in all (at most %d)", total, MaxDataBytes)
	}
	if q, ok := m[DataQoS]; ok && q != QoSGuaranteed && q != QoSBestEffort {
		return fmt.Errorf("data[%q] = %.20q: %s or %s", DataQoS, q, QoSGuaranteed, QoSBestEffort)
	}
	return nil
}

// ValidVMName checks a full VM name as it may appear in a request: a DNS
// name of labels.
func ValidVMName(name string) error {
	if name == "" || len(name) > MaxVMNameLen {
		return fmt.Errorf("VM name %.40q: 1 to %d characters", name, MaxVMNameLen)
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if err := ValidLabel(name[start:i]); err != nil {
				return fmt.Errorf("VM name %.60q: %v", name, err)
			}
			start = i + 1
		}
	}
	return nil
}

// ValidCluster checks a cluster name: a label short enough for VM names.
func ValidCluster(c string) error {
	if err := ValidLabel(c); err != nil {
		return err
	}
	if len(c) > MaxClusterLen {
		return fmt.Errorf("cluster name %.20q… is %d characters: at most %d, so that VM names (cluster and index) fit 63", c, len(c), MaxClusterLen)
	}
	return nil
}

func validNames(field string, names []string, max int, check func(string) error) error {
	if len(names) > max {
		return bad("%s: %d entries (at most %d)", field, len(names), max)
	}
	for i, n := range names {
		if err := check(n); err != nil {
			return bad("%s[%d]: %v", field, i, err)
		}
	}
	return nil
}

// Validate checks the arguments of auth.
func (a AuthArgs) Validate() error {
	if err := ValidLabel(a.User); err != nil {
		return Errorf(ErrUnauthorized, "user name: %v", err)
	}
	if a.Password == "" {
		return Errorf(ErrUnauthorized, "password required")
	}
	if len(a.Password) > MaxPassword {
		return Errorf(ErrUnauthorized, "password of %d bytes: at most %d are checked (bcrypt), longer ones are refused rather than cut", len(a.Password), MaxPassword)
	}
	if a.Cluster != "" {
		if err := ValidLabel(a.Cluster); err != nil {
			return bad("cluster: %v", err)
		}
	}
	return nil
}

// Validate checks the arguments of list.
func (a ListArgs) Validate() error {
	if err := validNames("names", a.Names, MaxRequestVMs, ValidVMName); err != nil {
		return err
	}
	if a.Cluster != "" {
		if err := ValidLabel(a.Cluster); err != nil {
			return bad("cluster: %v", err)
		}
	}
	if len(a.After) > MaxVMNameLen {
		return bad("after: %d characters (at most %d)", len(a.After), MaxVMNameLen)
	}
	if a.Limit < 0 || a.Limit > MaxPage {
		return bad("limit: %d (0 to %d)", a.Limit, MaxPage)
	}
	return nil
}

// Validate checks the arguments of list_lnms.
// Validate checks the arguments of clusters (a flag: always valid).
func (a ClustersArgs) Validate() error { return nil }

func (a ListLNMsArgs) Validate() error {
	return validNames("names", a.Names, MaxLNMs, ValidLabel)
}

// MaxReasonLen bounds a node mode's reason and a policy's notice.
const MaxReasonLen = 512

// Validate checks the arguments of set_lnm_mode.
func (a SetLNMModeArgs) Validate() error {
	if err := ValidLabel(a.LNM); err != nil {
		return bad("lnm: %v", err)
	}
	switch a.Mode {
	case ModeActive, ModeIsolated, ModeDraining:
	case ModeMaintenance:
		return bad("mode maintenance is entered by a drain once the node is empty: drain it")
	default:
		return bad("mode %q: want isolated, draining or active", a.Mode)
	}
	if len(a.Reason) > MaxReasonLen || !utf8.ValidString(a.Reason) {
		return bad("reason: at most %d bytes of UTF-8", MaxReasonLen)
	}
	return nil
}

// Validate checks the arguments of start.
func (a StartArgs) Validate() error {
	if err := ValidID(a.ID); err != nil {
		return err
	}
	if err := ValidCluster(a.Cluster); err != nil {
		return bad("cluster: %v", err)
	}
	switch {
	case a.Count < 0:
		return bad("count: %d is negative", a.Count)
	case a.Count > MaxRequestVMs:
		return bad("count: %d (at most %d)", a.Count, MaxRequestVMs)
	case a.Count > 0 && len(a.Names) > 0:
		return bad("count and names: give one or the other")
	case a.Count == 0 && len(a.Names) == 0:
		return bad("count: at least 1 VM (or names)")
	}
	if err := validNames("names", a.Names, MaxRequestVMs, ValidLabel); err != nil {
		return err
	}
	if err := validNames("lnms", a.LNMs, MaxLNMs, ValidLabel); err != nil {
		return err
	}
	if a.MemMB < 0 || a.MemMB > MaxMemMB {
		return bad("mem_mb: %d (0 for the default, or 1 to %d)", a.MemMB, MaxMemMB)
	}
	if a.VCPUs < 0 || a.VCPUs > MaxVCPUs {
		return bad("vcpus: %d (0 for the default, or 1 to %d)", a.VCPUs, MaxVCPUs)
	}
	return ValidArgs(a.Args)
}

// Validate checks the arguments of op_on.
func (a OpArgs) Validate() error {
	if err := ValidID(a.ID); err != nil {
		return err
	}
	if _, err := ParseOp(string(a.Op)); err != nil {
		return bad("op: %v", err)
	}
	if len(a.VMs) == 0 {
		return bad("vms: empty VM list")
	}
	if err := validNames("vms", a.VMs, MaxRequestVMs, ValidVMName); err != nil {
		return err
	}
	return ValidArgs(a.Args)
}

// Validate checks the arguments of migrate.
func (a MigrateArgs) Validate() error {
	if err := ValidID(a.ID); err != nil {
		return err
	}
	if len(a.VMs) == 0 {
		return bad("vms: empty VM list")
	}
	if err := validNames("vms", a.VMs, MaxRequestVMs, ValidVMName); err != nil {
		return err
	}
	if err := validNames("lnms", a.LNMs, MaxLNMs, ValidLabel); err != nil {
		return err
	}
	return ValidArgs(a.Args)
}

// Validate checks the arguments of forget.
func (a ForgetArgs) Validate() error {
	if len(a.VMs) == 0 {
		return bad("vms: empty VM list")
	}
	return validNames("vms", a.VMs, MaxRequestVMs, ValidVMName)
}

// Validate checks the arguments of plan: exactly one request.
func (a PlanArgs) Validate() error {
	n := 0
	var err error
	if a.Start != nil {
		n, err = n+1, a.Start.Validate()
	}
	if a.Op != nil && err == nil {
		n, err = n+1, a.Op.Validate()
	}
	if a.Migrate != nil && err == nil {
		n, err = n+1, a.Migrate.Validate()
	}
	if err != nil {
		return err
	}
	if n != 1 {
		return bad("plan needs exactly one of start, op or migrate (got %d)", n)
	}
	return nil
}

// Validate checks the arguments of events.
func (a EventsArgs) Validate() error {
	if a.Cluster != "" {
		if err := ValidLabel(a.Cluster); err != nil {
			return bad("cluster: %v", err)
		}
	}
	return nil
}

// Validate checks ConsoleArgs.
func (a ConsoleArgs) Validate() error {
	if err := ValidVMName(a.VM); err != nil {
		return bad("console: %v", err)
	}
	if a.Tail < 0 || a.Tail > MaxConsoleTail {
		return bad("console: tail %d: 0 to %d bytes", a.Tail, MaxConsoleTail)
	}
	return nil
}

// Validate checks TokensArgs.
func (a TokensArgs) Validate() error {
	switch a.Action {
	case TokensList:
	case TokensCreate:
		if len(a.Name) > 64 {
			return bad("tokens create: name is %d bytes (at most 64)", len(a.Name))
		}
		if a.Expires != "" {
			d, err := time.ParseDuration(a.Expires)
			if err != nil || d <= 0 || d > 10*365*24*time.Hour {
				return bad("tokens create: expires %.20q: a duration such as 720h, up to ten years", a.Expires)
			}
		}
	case TokensRevoke:
		if a.ID == "" || len(a.ID) > 64 {
			return bad("tokens revoke: the token's id is required")
		}
	default:
		return bad("tokens: action %.20q: want list, create or revoke", a.Action)
	}
	if a.User != "" {
		if err := ValidLabel(a.User); err != nil {
			return bad("tokens: user: %v", err)
		}
	}
	return nil
}

// Validate checks KeysArgs.
func (a KeysArgs) Validate() error {
	switch a.Action {
	case KeysList:
	case KeysAdd, KeysRemove:
		if a.Key == "" {
			return bad("keys %s: key is required", a.Action)
		}
	default:
		return bad("keys: action %.20q: want list, add or remove", a.Action)
	}
	if len(a.Key) > MaxKeyLine {
		return bad("keys: key is %d bytes (at most %d)", len(a.Key), MaxKeyLine)
	}
	if a.User != "" {
		if err := ValidLabel(a.User); err != nil {
			return bad("keys: user: %v", err)
		}
	}
	return nil
}

// Validate checks the arguments of policy.
func (a PolicyArgs) Validate() error {
	switch a.Action {
	case "", "status", "register", "unregister":
	default:
		return bad("action %.20q: want status, register or unregister", a.Action)
	}
	for _, f := range []struct{ name, v string }{{"script", a.Script}, {"event", a.Event}, {"handler", a.Handler}} {
		if len(f.v) > 128 {
			return bad("%s: %d characters (at most 128)", f.name, len(f.v))
		}
	}
	if a.Order < -1_000_000 || a.Order > 1_000_000 {
		return bad("order: %d (±1,000,000)", a.Order)
	}
	return nil
}

// Validate checks an LNM's registration.
func (h Hello) Validate() error {
	if err := ValidLabel(h.Node.Name); err != nil {
		return bad("node.name: %v", err)
	}
	if h.Node.CPUs < 0 || h.Node.CPUs > 1<<20 || h.Node.MemMB < 0 || h.Node.MemMB > 1<<40 {
		return bad("node: %d CPUs, %d MiB out of range", h.Node.CPUs, h.Node.MemMB)
	}
	for _, f := range []struct{ name, v string }{{"address", h.Node.Address}, {"recovery", h.Node.Recovery},
		{"driver", h.Node.Driver}, {"hostname", h.Node.Hostname}, {"model", h.Node.Model}} {
		if len(f.v) > 512 {
			return bad("node.%s: %d bytes (at most 512)", f.name, len(f.v))
		}
	}
	return nil
}

// Validate checks a guest as a node reports it; a cached object that is
// not valid is an error too (the caller drops it, keeping the guest).
func (g *Guest) Validate() error {
	if len(g.Name) == 0 || len(g.Name) > MaxVMNameLen {
		return fmt.Errorf("guest name of %d bytes (1 to %d)", len(g.Name), MaxVMNameLen)
	}
	if len(g.Reason) > 1024 {
		g.Reason = g.Reason[:1024]
	}
	if g.MemMB < 0 || g.MemMB > MaxMemMB || g.VCPUs < 0 || g.VCPUs > MaxVCPUs {
		return fmt.Errorf("guest %.60q: %d MiB, %d vCPUs out of range", g.Name, g.MemMB, g.VCPUs)
	}
	return nil
}

// ValidCached checks a cached VM object a node sent back: what the
// controller would adopt from it must be within the bounds it would have
// set itself.
func ValidCached(v *VM) error {
	if err := ValidVMName(v.Name); err != nil {
		return err
	}
	if err := ValidID(v.Request); err != nil {
		return err
	}
	if v.Cluster != "" {
		if err := ValidLabel(v.Cluster); err != nil {
			return fmt.Errorf("cluster: %v", err)
		}
	}
	if len(v.Reason) > 1024 {
		return fmt.Errorf("reason of %d bytes", len(v.Reason))
	}
	if v.MemMB < 0 || v.MemMB > MaxMemMB || v.VCPUs < 0 || v.VCPUs > MaxVCPUs {
		return fmt.Errorf("%d MiB, %d vCPUs out of range", v.MemMB, v.VCPUs)
	}
	return ValidData(v.Data)
}

// IndexFits reports whether cluster+index is a valid short name length.
func IndexFits(cluster string, index int) bool {
	return len(cluster)+len(strconv.Itoa(index)) <= MaxNameLen
}
