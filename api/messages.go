package api

import "time"

// This file holds the arguments and replies of both links. methods.go
// declares which method carries which.

// Empty is the argument or reply of a method that has none.
type Empty struct{}

// --- client ↔ controller ---

// AuthArgs authenticates a client session.
type AuthArgs struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Cluster  string `json:"cluster,omitempty"` // only receive this cluster's VMs
}

// AuthReply answers AuthArgs: the identity and the site's domain. The
// client loads its cached objects with list after opening its event feed
// (so no change between the two is lost); they are not repeated here.
type AuthReply struct {
	Identity Identity `json:"identity"`
	Domain   string   `json:"domain"`
}

// ListArgs selects VMs. Names empty means every VM the caller may see.
type ListArgs struct {
	Names   []string `json:"names,omitempty"`
	Cluster string   `json:"cluster,omitempty"`
	Status  bool     `json:"status,omitempty"` // include usage averages
	All     bool     `json:"all,omitempty"`    // everyone's VMs (policy decides)
	Lists   bool     `json:"lists,omitempty"`  // include lost/missing/unmanaged/conflicts (admins; with Limit, on the first page)
	// Paging, for lists too long for one frame (a client cache of a
	// quarter of a million VMs is about 55 MB): with Limit > 0 the reply
	// holds at most Limit VMs in name order, those named after After, and
	// More tells whether any follow.
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// ListReply answers list. Seq is the number of the last event published
// before the list was taken: every later change comes with a higher one.
type ListReply struct {
	Seq       uint64 `json:"seq"`
	VMs       []*VM  `json:"vms"`
	Lost      []*VM  `json:"lost,omitempty"`
	Missing   []*VM  `json:"missing,omitempty"`
	Unmanaged []*VM  `json:"unmanaged,omitempty"`
	// Conflicts are VMs a node reported that the controller knows on
	// another connected node: kept where they were, listed for admins.
	Conflicts []*VM `json:"conflicts,omitempty"`
	More      bool  `json:"more,omitempty"` // paged: VMs after the last one follow
}

// ListLNMsArgs selects LNMs; empty Names means all.
type ListLNMsArgs struct {
	Names  []string `json:"names,omitempty"`
	Status bool     `json:"status,omitempty"`
}

// ListLNMsReply answers list_lnms.
type ListLNMsReply struct {
	LNMs []*LNM `json:"lnms"`
}

// SetLNMModeArgs changes a node's mode: isolated, draining or active
// (restore). Maintenance follows a drain by itself.
type SetLNMModeArgs struct {
	LNM    string   `json:"lnm"`
	Mode   NodeMode `json:"mode"`
	Reason string   `json:"reason,omitempty"`
}

// ClustersArgs asks for the caller's virtual clusters (All: everyone's,
// for admins).
type ClustersArgs struct {
	All bool `json:"all,omitempty"`
}

// ClustersReply lists virtual clusters.
type ClustersReply struct {
	Clusters []Cluster `json:"clusters"`
}

// StartArgs asks for Count new VMs in Cluster (or the explicit Names), on the
// suggested LNMs, with extra Args for the policies.
type StartArgs struct {
	ID      string    `json:"id,omitempty"` // request id; a retry with the same id is idempotent
	Cluster string    `json:"cluster"`
	Count   int       `json:"count,omitempty"`
	Names   []string  `json:"names,omitempty"` // explicit short names
	LNMs    []string  `json:"lnms,omitempty"`
	MemMB   int       `json:"mem_mb,omitempty"`
	VCPUs   int       `json:"vcpus,omitempty"`
	Args    StringMap `json:"args,omitempty"`
}

// OpArgs applies Op to VMs (full names). Force makes a shutdown or reboot
// that the guest does not honour in time a hard stop or reset.
type OpArgs struct {
	ID    string    `json:"id,omitempty"`
	Op    Op        `json:"op"`
	VMs   []string  `json:"vms"`
	Force bool      `json:"force,omitempty"`
	Args  StringMap `json:"args,omitempty"`
}

// MigrateArgs moves VMs to (suggested) LNMs.
type MigrateArgs struct {
	ID   string    `json:"id,omitempty"`
	VMs  []string  `json:"vms"`
	LNMs []string  `json:"lnms"`
	Args StringMap `json:"args,omitempty"`
}

// ForgetArgs removes the records of missing or lost VMs: whatever the
// hypervisor did with them, the controller stops expecting them.
type ForgetArgs struct {
	VMs []string `json:"vms"`
}

// PlanArgs dry-runs one of the requests through the live chain.
type PlanArgs struct {
	Start   *StartArgs   `json:"start,omitempty"`
	Op      *OpArgs      `json:"op,omitempty"`
	Migrate *MigrateArgs `json:"migrate,omitempty"`
}

// VMResult is what happened to one VM of a request.
type VMResult struct {
	Name  string  `json:"name"`
	OK    bool    `json:"ok"`
	State VMState `json:"state,omitempty"`
	LNM   string  `json:"lnm,omitempty"`
	Error string  `json:"error,omitempty"`
	VM    *VM     `json:"vm,omitempty"`
	// Cached is, in an LNM's start result, the version of the VM object
	// the LNM now caches, having applied the controller's expected update
	// itself (state from the result, reason ReasonStarted, version + 1).
	// When the controller's update is exactly that, no acknowledgement
	// needs to travel back.
	Cached uint64 `json:"cached,omitempty"`
}

// ReasonStarted is the reason of a VM's state change when its start
// succeeded.
const ReasonStarted = "started"

// Result reports exactly what a request did: per-VM outcomes and the VMs
// that policy dropped before execution. Op is the operation executed
// (a policy may have changed the one asked for: the trace says which).
type Result struct {
	ID        string      `json:"id"`
	Op        Op          `json:"op,omitempty"`
	Requested int         `json:"requested"`
	Done      []VMResult  `json:"done"`
	Dropped   []Drop      `json:"dropped,omitempty"`
	Trace     []TraceStep `json:"trace,omitempty"`
}

// OK counts successful VMs.
func (r *Result) OK() int {
	n := 0
	for _, d := range r.Done {
		if d.OK {
			n++
		}
	}
	return n
}

// EventsArgs opens the pushed-event stream: every change to the caller's
// VMs (only Cluster's, when set). Watch asks for every event the policy
// lets the user see (admins: all), not only their own VMs'.
type EventsArgs struct {
	Watch   bool   `json:"watch,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

// PolicyArgs is an admin call on the policy host.
type PolicyArgs struct {
	Action  string `json:"action"` // status, register, unregister
	Script  string `json:"script,omitempty"`
	Event   string `json:"event,omitempty"`
	Handler string `json:"handler,omitempty"`
	Order   int    `json:"order,omitempty"`
}

// PolicyReply answers policy: the host's status for "status", nothing
// more for the others.
type PolicyReply struct {
	Scripts []ScriptStatus `json:"scripts,omitempty"`
	// NotifyDropped counts notifications dropped because the policy
	// host's queue was full.
	NotifyDropped uint64 `json:"notify_dropped,omitempty"`
}

// ScriptStatus describes one policy script.
type ScriptStatus struct {
	Name      string          `json:"name"`
	File      string          `json:"file"`
	Hash      string          `json:"hash,omitempty"`
	LoadedAt  time.Time       `json:"loaded_at,omitempty"`
	Loaded    bool            `json:"loaded"`
	LastError string          `json:"last_error,omitempty"`
	ErrorAt   time.Time       `json:"error_at,omitempty"`
	States    int             `json:"states"` // Lua states currently created
	Handlers  []HandlerStatus `json:"handlers"`
}

// HandlerStatus describes one registration of a script.
type HandlerStatus struct {
	Event   string  `json:"event"`
	Order   int     `json:"order"`
	Name    string  `json:"name"`
	Every   string  `json:"every,omitempty"`   // timers
	Runtime bool    `json:"runtime,omitempty"` // added with Register
	Active  bool    `json:"active"`
	Calls   uint64  `json:"calls"`
	Errors  uint64  `json:"errors"`
	Cut     uint64  `json:"cut,omitempty"` // calls cut off at a limit
	TotalUS int64   `json:"total_us"`
	MeanUS  float64 `json:"mean_us"`
	P50US   int64   `json:"p50_us"` // upper bound of the log2 bucket
	P99US   int64   `json:"p99_us"`
	MaxUS   int64   `json:"max_us"`
}

// StatusArgs asks for more than the counts: Check verifies the state's
// invariants (a pass over every VM), GC collects garbage first so
// HeapBytes is what is live.
type StatusArgs struct {
	Check bool `json:"check,omitempty"`
	GC    bool `json:"gc,omitempty"`
}

// Status answers the admin status call: the sizes of the global state and
// what the controller process holds.
type Status struct {
	Counts
	Goroutines int    `json:"goroutines"`
	HeapBytes  uint64 `json:"heap_bytes"`
	Sessions   int    `json:"sessions"`
	Feeds      int    `json:"feeds"`
	// Invariants is what the check found wrong ("" when all hold, or when
	// no check was asked for).
	Invariants string `json:"invariants,omitempty"`
}

// --- controller ↔ LNM ---

// Hello opens an LNM session: the node's description (its name must
// equal the certificate's) and its status, so that registration needs one
// call back (list_guests) instead of three.
type Hello struct {
	Node   NodeInfo   `json:"node"`
	Status NodeStatus `json:"status"`
	// MinTerm is the highest leadership term the LNM has seen (highly
	// available controllers): a controller leading in an older term must
	// refuse the registration.
	MinTerm int64 `json:"min_term,omitempty"`
}

// HelloReply tells the LNM the controller's view.
type HelloReply struct {
	Domain         string `json:"domain"`
	ReportInterval int64  `json:"report_interval_ms"`
	ControllerID   string `json:"controller_id"`
	// Term is the controller's leadership term (0: not highly available).
	Term int64 `json:"term,omitempty"`
}

// Guest is one VM found on a node's hypervisor: its real state and, when
// the LNM holds one, the cached VM object the controller gave it.
type Guest struct {
	Name   string  `json:"name"`
	State  VMState `json:"state"`
	Reason string  `json:"reason,omitempty"`
	MemMB  int     `json:"mem_mb"`
	VCPUs  int     `json:"vcpus"`
	Cached *VM     `json:"cached,omitempty"`
}

// GuestsReply answers list_guests, get_details and get_status.
type GuestsReply struct {
	Guests []Guest          `json:"guests,omitempty"`
	Usage  map[string]Usage `json:"usage,omitempty"`
}

// NamesArgs names VMs on an LNM.
type NamesArgs struct {
	Names []string `json:"names"`
}

// ReceiveArgs delivers cached VM objects (the controller's acknowledgement).
// States updates objects the LNM already holds (after a start or an
// operation it carried out) without resending them whole.
type ReceiveArgs struct {
	VMs    []*VM         `json:"vms,omitempty"`
	States []StateUpdate `json:"states,omitempty"`
}

// StateUpdate is the part of a cached VM object a state change touches.
type StateUpdate struct {
	Name    string  `json:"n"`
	State   VMState `json:"s"`
	Reason  string  `json:"r,omitempty"`
	Version uint64  `json:"v"`
}

// LNMStartArgs starts VMs (sent with their objects, which the LNM caches).
type LNMStartArgs struct {
	VMs []*VM `json:"vms"`
}

// LNMOpArgs applies an operation to VMs on the node.
type LNMOpArgs struct {
	Op    Op       `json:"op"`
	Names []string `json:"names"`
	Force bool     `json:"force,omitempty"`
}

// LNMMigrateArgs migrates VMs to the node Target reachable at Address.
type LNMMigrateArgs struct {
	Names   []string `json:"names"`
	Target  string   `json:"target"`
	Address string   `json:"address"`
}

// LNMResults are per-VM outcomes of an LNM batch.
type LNMResults struct {
	Results []VMResult `json:"results"`
}

// Report is one frame on the LNM's event stream: state changes of its
// guests and, periodically, usage reports.
type Report struct {
	Changes []Guest          `json:"changes,omitempty"`
	Node    *NodeStatus      `json:"node,omitempty"`
	Usage   map[string]Usage `json:"usage,omitempty"`
	Beat    bool             `json:"beat,omitempty"` // heartbeat only
}

// Image is one base image of the site's image store, as users see it.
type Image struct {
	Name        string `json:"name"`
	Format      string `json:"format"` // qcow2 or raw
	Description string `json:"description,omitempty"`
	MinMemMB    int    `json:"min_mem_mb,omitempty"`
	Boot        string `json:"boot"`            // "kernel" (direct kernel boot) or "disk"
	Bytes       int64  `json:"bytes,omitempty"` // size of the base file
}

// ImagesReply lists the images users may start VMs from.
type ImagesReply struct {
	Images []Image `json:"images"`
	// Problems are metadata files that describe no usable image (admins
	// only).
	Problems []string `json:"problems,omitempty"`
}

// Key actions.
const (
	KeysList   = "list"
	KeysAdd    = "add"
	KeysRemove = "remove"
)

// KeysArgs manage the caller's SSH public keys: list them, add one
// (Key: an authorized_keys line) or remove one (Key: the line, its
// fingerprint SHA256:… or its comment). Admins may name another User.
type KeysArgs struct {
	Action string `json:"action"`
	Key    string `json:"key,omitempty"`
	User   string `json:"user,omitempty"`
}

// SSHKey is one registered public key.
type SSHKey struct {
	Line        string `json:"line"`        // the authorized_keys line, normalised
	Fingerprint string `json:"fingerprint"` // SHA256:…
	Type        string `json:"type"`
	Comment     string `json:"comment,omitempty"`
}

// KeysReply is the user's keys after the action.
type KeysReply struct {
	User string   `json:"user"`
	Keys []SSHKey `json:"keys"`
}

// MaxKeyLine bounds one authorized_keys line; MaxKeysBytes all of a
// user's keys together: they travel to each new VM in its data
// (ssh_keys, one key per line), which holds at most MaxDataValue.
const (
	MaxKeyLine   = 2048
	MaxKeysBytes = MaxDataValue
)

// ConsoleArgs open a VM's serial console. Tail asks for up to that many
// bytes of the console's log (what the guest printed before, the boot log)
// first; LogOnly sends the log and ends instead of attaching.
//
// The stream: the server sends "data" frames (the log, then what the guest
// prints) and, once attached, "ready" before the first live byte; the
// client sends "data" frames (keystrokes). Both sides send "beat" when
// idle for a keepalive interval and close a stream silent for three;
// "eof" ends it from either side, "error" carries why it could not open.
type ConsoleArgs struct {
	VM      string `json:"vm"`
	Tail    int    `json:"tail,omitempty"`
	LogOnly bool   `json:"log_only,omitempty"`
}

// ConsoleData is one frame of console bytes.
type ConsoleData struct {
	Data []byte `json:"d,omitempty"`
}

// Console frame methods.
const (
	ConsoleFrameData  = "data"
	ConsoleFrameReady = "ready"
	ConsoleFrameBeat  = "beat"
	ConsoleFrameEOF   = "eof"
	ConsoleFrameError = "error"
)

// MaxConsoleFrame bounds the bytes of one console frame; MaxConsoleTail
// the log a client may ask for.
const (
	MaxConsoleFrame = 16 << 10
	MaxConsoleTail  = 1 << 20
)

// Token actions.
const (
	TokensList   = "list"
	TokensCreate = "create"
	TokensRevoke = "revoke"
)

// TokensArgs manage the caller's API tokens (HTTP API: Authorization:
// Bearer TOKEN): list them, create one (Name, optional Expires as a Go
// duration, "720h"; "" = never), or revoke one (ID). Admins may name
// another User for list and revoke. A request made with a token cannot
// create tokens.
type TokensArgs struct {
	Action  string `json:"action"`
	Name    string `json:"name,omitempty"`
	Expires string `json:"expires,omitempty"`
	ID      string `json:"id,omitempty"`
	User    string `json:"user,omitempty"`
}

// Token describes an API token (never its secret).
type Token struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	User    string    `json:"user"`
	Admin   bool      `json:"admin,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
}

// TokensReply lists the user's tokens; Secret is the new token, shown
// only in the answer to create.
type TokensReply struct {
	User   string  `json:"user"`
	Tokens []Token `json:"tokens"`
	Secret string  `json:"secret,omitempty"`
}

// MaxTokens bounds a user's tokens.
const MaxTokens = 32

// Operation is an asynchronous request of the HTTP API (?async=1): it
// runs on after the answer; poll it, wait for it, or watch the event
// stream for its "operation" event.
type Operation struct {
	ID      string    `json:"id"`
	User    string    `json:"user"`
	Method  string    `json:"method"` // start, op_on, migrate, forget
	Status  string    `json:"status"` // running, done, failed
	Created time.Time `json:"created"`
	Done    time.Time `json:"done,omitzero"`
	Result  *Result   `json:"result,omitempty"`
	Error   *Error    `json:"error,omitempty"`
}

// Operation statuses, and the event type announcing one's end.
const (
	OpRunning   = "running"
	OpDone      = "done"
	OpFailed    = "failed"
	EvOperation = "operation"
)
