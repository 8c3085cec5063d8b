package api

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"
)

// StringMap is a map of strings in a wire message: a VM's policy data,
// an event's details, a request's arguments. It decodes into a map sized
// to what it holds. The links' codec (segmentio/encoding/json) makes every
// plain map[string]string with room for 64 entries, about 5 KiB, so a
// client cache or a recovering controller holding a million VMs with data,
// or a feed of a million events each with one detail, paid gigabytes of
// allocation and the GC work to match; this costs a third of the time.
type StringMap map[string]string

// UnmarshalJSON decodes a JSON object of strings (or null) into m.
func (m *StringMap) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*m = nil
		return nil
	}
	mm := map[string]string(*m)
	if mm == nil {
		mm = map[string]string{} // no table until it holds something
	}
	if err := json.Unmarshal(b, &mm); err != nil {
		return err
	}
	*m = mm
	return nil
}

// VMState is the run state of a virtual machine as the controller knows it.
type VMState string

// VM states. Pending and Starting are controller-side states before the LNM
// confirms a boot; Lost and Missing mirror the paper's lists.
const (
	StatePending    VMState = "pending"    // registered, start not yet sent
	StateStarting   VMState = "starting"   // start sent to the LNM
	StateRunning    VMState = "running"    // executing
	StatePaused     VMState = "paused"     // execution paused, memory resident
	StateShutoff    VMState = "shutoff"    // halted (shutdown), still defined
	StateHibernated VMState = "hibernated" // memory image saved to storage
	StateMigrating  VMState = "migrating"  // live migration in progress
	StateCrashed    VMState = "crashed"    // the hypervisor reports a crash
	StateLost       VMState = "lost"       // its LNM failed; real state unknown
	StateMissing    VMState = "missing"    // vanished from its LNM unexpectedly
	StateDestroyed  VMState = "destroyed"  // hard-stopped and removed
	StateFailed     VMState = "failed"     // the start failed
)

// Op is one of the operations of the paper's Table 3.
type Op string

// The op_on operations (Table 3).
const (
	OpPause     Op = "pause"
	OpResume    Op = "resume"
	OpShutdown  Op = "shutdown"
	OpReboot    Op = "reboot"
	OpHibernate Op = "hibernate"
	OpRestore   Op = "restore"
	OpDestroy   Op = "destroy"
	OpCycle     Op = "cycle"
)

// Ops lists every valid operation in Table 3 order.
func Ops() []Op {
	return []Op{OpPause, OpResume, OpShutdown, OpReboot, OpHibernate, OpRestore, OpDestroy, OpCycle}
}

// ParseOp validates an operation name.
func ParseOp(s string) (Op, error) {
	for _, o := range Ops() {
		if string(o) == s {
			return o, nil
		}
	}
	names := make([]string, 0, 8)
	for _, o := range Ops() {
		names = append(names, string(o))
	}
	return "", fmt.Errorf("unknown operation %q (valid: %s)", s, strings.Join(names, ", "))
}

// Leaves is the state a successful operation leaves a guest in.
func (o Op) Leaves() VMState {
	switch o {
	case OpPause:
		return StatePaused
	case OpShutdown:
		return StateShutoff
	case OpHibernate:
		return StateHibernated
	case OpDestroy:
		return StateDestroyed
	}
	return StateRunning
}

// Avg holds 1-, 5- and 15-minute averages of one figure.
type Avg struct {
	M1  float64 `json:"m1"`
	M5  float64 `json:"m5"`
	M15 float64 `json:"m15"`
}

// Usage is the resource usage of a VM or a node as 1/5/15-minute averages.
// CPU is in cores (1.0 = one core busy); memory in bytes; rates in bytes/s.
type Usage struct {
	CPU       Avg `json:"cpu"`
	MemBytes  Avg `json:"mem_bytes"`
	NetRx     Avg `json:"net_rx"`
	NetTx     Avg `json:"net_tx"`
	DiskRead  Avg `json:"disk_read"`
	DiskWrite Avg `json:"disk_write"`
}

// VM is the VM object of the paper: the controller holds the authoritative
// copy; LNMs and clients hold cached copies that the controller updates.
type VM struct {
	Name     string    `json:"name"`                // full name <short>.<owner>.<domain>
	Short    string    `json:"short"`               // e.g. sneetch3
	Owner    string    `json:"owner"`               // user name
	Cluster  string    `json:"cluster"`             // virtual cluster name (per owner)
	LNM      string    `json:"lnm"`                 // node the VM runs on
	State    VMState   `json:"state"`               // run state
	Reason   string    `json:"reason,omitempty"`    // why the last state change happened
	MemMB    int       `json:"mem_mb"`              // memory allocation
	VCPUs    int       `json:"vcpus"`               // virtual CPUs
	Data     StringMap `json:"data,omitempty"`      // policy data (ip, mac, image…)
	Usage    *Usage    `json:"usage,omitempty"`     // latest averages, when asked for
	Version  uint64    `json:"version"`             // bumped on every controller update
	Created  time.Time `json:"created"`             // when it was registered
	Request  string    `json:"request,omitempty"`   // id of the start request that created it
	Unmanage bool      `json:"unmanaged,omitempty"` // on the unmanaged list
}

// Clone returns a deep copy safe to hand out.
func (v *VM) Clone() *VM {
	c := *v
	c.Data = maps.Clone(v.Data)
	if v.Usage != nil {
		u := *v.Usage
		c.Usage = &u
	}
	return &c
}

// Snapshot is a deep copy without the usage figures: what results and
// events carry (usage is for list --status and policies, and changes on
// every report).
func (v *VM) Snapshot() *VM {
	c := v.Clone()
	c.Usage = nil
	return c
}

// NodeInfo describes a physical node (get_node_info).
type NodeInfo struct {
	Name     string `json:"name"`
	Address  string `json:"address,omitempty"`  // advertised address (migration target)
	Recovery string `json:"recovery,omitempty"` // where the LNM listens for recovery announcements
	Driver   string `json:"driver"`             // sim, libvirt
	CPUs     int    `json:"cpus"`
	MemMB    int    `json:"mem_mb"`
	Hostname string `json:"hostname,omitempty"`
	Model    string `json:"model,omitempty"`
	// GuaranteedCPUs is how many vCPUs the node can guarantee: its host
	// CPUs, when CPUs offers more (vCPU overcommit for best-effort VMs).
	// 0: all of CPUs.
	GuaranteedCPUs int `json:"guaranteed_cpus,omitempty"`
}

// NodeStatus is a node's dynamic state (get_node_status).
type NodeStatus struct {
	VMs       int `json:"vms"`
	FreeMemMB int `json:"free_mem_mb"`
	FreeVCPUs int `json:"free_vcpus"`
	// FreeGuaranteedVCPUs is how many more vCPUs of guaranteed VMs fit:
	// what its guaranteed VMs leave of GuaranteedCPUs, at most FreeVCPUs.
	FreeGuaranteedVCPUs int   `json:"free_guaranteed_vcpus"`
	Usage               Usage `json:"usage"`
	ReportedAt          int64 `json:"reported_at"` // unix ms
}

// LNMState is the connection state of an LNM as the controller sees it.
type LNMState string

// LNM connection states.
const (
	LNMConnected    LNMState = "connected"
	LNMDisconnected LNMState = "disconnected"
	LNMRecovering   LNMState = "recovering" // known from before a controller restart, not back yet
)

// NodeMode is a node's place in its lifecycle, set by admins (and by
// policies) independently of whether its LNM is connected.
type NodeMode string

// Node modes. A node is active unless an admin isolated or drained it;
// a draining node enters maintenance by itself once no VM on it takes
// resources (running, paused, migrating, starting or lost).
const (
	ModeActive      NodeMode = "active"      // new VMs may be placed there
	ModeIsolated    NodeMode = "isolated"    // nothing new placed there; its VMs stay
	ModeDraining    NodeMode = "draining"    // nothing new placed there; its VMs leave (drain policy)
	ModeMaintenance NodeMode = "maintenance" // empty: may be powered off or removed
)

// ParseNodeMode validates a mode name.
func ParseNodeMode(s string) (NodeMode, error) {
	switch m := NodeMode(s); m {
	case ModeActive, ModeIsolated, ModeDraining, ModeMaintenance:
		return m, nil
	}
	return "", fmt.Errorf("node mode %q: want active, isolated, draining or maintenance", s)
}

// Placeable reports whether new VMs may be placed on a node in mode m.
func (m NodeMode) Placeable() bool { return m == ModeActive || m == "" }

// LNM is the controller's record of a local node manager.
type LNM struct {
	Info   NodeInfo   `json:"info"`
	Status NodeStatus `json:"status"`
	State  LNMState   `json:"state"`
	Since  time.Time  `json:"since"`
	// Mode is the node's lifecycle mode (admin commands lnm
	// isolate|drain|restore); ModeReason says why, ModeBy who set it and
	// ModeSince when. Notice is what a policy last reported about it
	// (a drain's progress, VMs that cannot move, a fence that failed).
	Mode       NodeMode  `json:"mode"`
	ModeReason string    `json:"mode_reason,omitempty"`
	ModeBy     string    `json:"mode_by,omitempty"`
	ModeSince  time.Time `json:"mode_since,omitzero"`
	Notice     string    `json:"notice,omitempty"`
	// Fenced is set once the site's fencing command confirmed the node
	// is powered off while disconnected: only then may its VMs be
	// restarted elsewhere. Cleared when it registers again (its stale
	// guests destroyed).
	Fenced bool `json:"fenced,omitempty"`
}

// Cluster is a virtual cluster: a named set of VMs of one owner.
type Cluster struct {
	Name  string   `json:"name"`
	Owner string   `json:"owner"`
	VMs   []string `json:"vms"`
}

// Identity is an authenticated user.
type Identity struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	Admin  bool     `json:"admin"`
}

// Drop records a VM removed from a request and why.
type Drop struct {
	VM     string `json:"vm"`
	Reason string `json:"reason"`
	By     string `json:"by,omitempty"` // handler that dropped it
}

// TraceStep is one entry of a request's decision trace.
type TraceStep struct {
	Event   string `json:"event"`
	Handler string `json:"handler"`
	Action  string `json:"action"` // approved, modified, rejected, error, replayed
	Detail  string `json:"detail,omitempty"`
	Micros  int64  `json:"us"`
}

// Event is a notification: delivered to policies and to clients over
// their event stream. Type is one of the Ev* names.
type Event struct {
	Seq    uint64    `json:"seq"`
	Type   string    `json:"type"`
	Time   time.Time `json:"time"`
	VM     *VM       `json:"vm,omitempty"`
	LNM    string    `json:"lnm,omitempty"`
	User   string    `json:"user,omitempty"`   // owner of the VM or requester
	Req    string    `json:"req,omitempty"`    // request id
	OK     bool      `json:"ok,omitempty"`     // for *_complete
	Error  string    `json:"error,omitempty"`  // failure text
	Detail StringMap `json:"detail,omitempty"` // extra fields

	// PluginsOnly keeps an event from clients' feeds when another event
	// of the same change already carries the VM to them (a start's
	// state_changed follows its start_complete).
	PluginsOnly bool `json:"-"`
}

// Counts summarises the controller's state (the admin status call).
type Counts struct {
	VMs       int `json:"vms"`
	Running   int `json:"running"`
	Lost      int `json:"lost"`
	Missing   int `json:"missing"`
	Unmanaged int `json:"unmanaged"`
	Conflicts int `json:"conflicts"`
	LNMs      int `json:"lnms"`
	Connected int `json:"connected"`
	Clusters  int `json:"clusters"`
	// ByState counts VMs per state (states with none are left out).
	ByState map[VMState]int `json:"by_state,omitempty"`
}
