package core

// This file declares the remote APIs as plain message types: the methods the
// controller exports to clients (the paper's Table 4) and those an LNM
// exports to the controller (Table 2). transport carries them; core gives
// them meaning.

// Controller methods for clients (Table 4 plus session plumbing).
const (
	MAuth      = "auth"      // first call of a client session
	MList      = "list"      // list(vm list, status)
	MListLNMs  = "list_lnms" // list_lnms(lnm list, status)
	MStart     = "start"     // start(vm list, lnm list)
	MOpOn      = "op_on"     // op_on(operation, vm list)
	MMigrate   = "migrate"   // migrate(vm list, lnm list)
	MClusters  = "clusters"  // list virtual clusters
	MWhoami    = "whoami"    // the session's identity
	MEvents    = "events"    // long-lived stream of pushed events
	MPlan      = "plan"      // dry-run a request through the chain
	MPolicy    = "policy"    // admin: policy status and (un)registration
	MStatus    = "status"    // admin: sizes of the global state
	MLNMHello  = "lnm_hello" // first call of an LNM session
	MLNMEvents = "lnm_events"
)

// LNM methods for the controller (Table 2).
const (
	LGetDetails    = "get_details"
	LGetStatus     = "get_status"
	LReceive       = "receive"
	LStart         = "start"
	LOpOn          = "op_on"
	LMigrate       = "migrate"
	LGetNodeInfo   = "get_node_info"
	LGetNodeStatus = "get_node_status"
	LListVMs       = "list_vms" // every domain on the node with its cached object
	LPrepare       = "prepare_migration"
)

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
	Lists   bool     `json:"lists,omitempty"`  // include lost/missing/unmanaged (admins; with Limit, on the first page)
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
	Seq       uint64 `json:"seq,omitempty"`
	VMs       []*VM  `json:"vms"`
	Lost      []*VM  `json:"lost,omitempty"`
	Missing   []*VM  `json:"missing,omitempty"`
	Unmanaged []*VM  `json:"unmanaged,omitempty"`
	More      bool   `json:"more,omitempty"` // paged: VMs after the last one follow
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
// that policy dropped before execution.
type Result struct {
	ID        string      `json:"id"`
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

// OpArgs applies Op to VMs (full names).
type OpArgs struct {
	ID   string    `json:"id,omitempty"`
	Op   Op        `json:"op"`
	VMs  []string  `json:"vms"`
	Args StringMap `json:"args,omitempty"`
}

// MigrateArgs moves VMs to (suggested) LNMs.
type MigrateArgs struct {
	ID   string    `json:"id,omitempty"`
	VMs  []string  `json:"vms"`
	LNMs []string  `json:"lnms"`
	Args StringMap `json:"args,omitempty"`
}

// PlanArgs dry-runs one of the requests through the live chain.
type PlanArgs struct {
	Start   *StartArgs   `json:"start,omitempty"`
	Op      *OpArgs      `json:"op,omitempty"`
	Migrate *MigrateArgs `json:"migrate,omitempty"`
}

// EventsArgs opens the pushed-event stream. Watch asks for every event the
// policy lets the user see (admins: all), not only their own VMs'.
type EventsArgs struct {
	Watch bool `json:"watch,omitempty"`
}

// ClustersReply lists virtual clusters.
type ClustersReply struct {
	Clusters []Cluster `json:"clusters"`
}

// PolicyArgs is an admin call on the policy host.
type PolicyArgs struct {
	Action  string `json:"action"` // status, register, unregister
	Script  string `json:"script,omitempty"`
	Event   string `json:"event,omitempty"`
	Handler string `json:"handler,omitempty"`
	Order   int    `json:"order,omitempty"`
}

// --- LNM side ---

// LNMHello opens an LNM session: the node's description (its name must
// equal the certificate's) and its status, so that registration needs one
// call back (list_vms) instead of three.
type LNMHello struct {
	Node   NodeInfo    `json:"node"`
	Status *NodeStatus `json:"status"`
}

// LNMHelloReply tells the LNM the controller's view.
type LNMHelloReply struct {
	Domain         string `json:"domain"`
	ReportInterval int64  `json:"report_interval_ms"`
	ControllerID   string `json:"controller_id"`
}

// Domain is one VM found on a node: its real state and, when the LNM holds
// one, the cached VM object the controller gave it.
type Domain struct {
	Name   string  `json:"name"`
	State  VMState `json:"state"`
	Reason string  `json:"reason,omitempty"`
	MemMB  int     `json:"mem_mb"`
	VCPUs  int     `json:"vcpus"`
	Cached *VM     `json:"cached,omitempty"`
}

// ListVMsReply answers list_vms.
type ListVMsReply struct {
	Domains []Domain `json:"domains"`
}

// NamesArgs names VMs on an LNM.
type NamesArgs struct {
	Names []string `json:"names"`
}

// ReceiveArgs delivers cached VM objects (the controller's acknowledgement).
// States updates objects the LNM already holds (after a start or an
// operation it carried out) without resending them whole.
type ReceiveArgs struct {
	VMs    []*VM         `json:"vms"`
	States []StateUpdate `json:"states,omitempty"`
	Forget []string      `json:"forget,omitempty"` // drop these cached objects ("*": all)
	// Sync: the VMs and States named here are the whole cache; drop every
	// other cached object (the full sync when an LNM registers).
	Sync bool `json:"sync,omitempty"`
}

// StateUpdate is the part of a cached VM object a state change touches.
type StateUpdate struct {
	Name    string  `json:"n"`
	State   VMState `json:"s"`
	Reason  string  `json:"r,omitempty"`
	Version uint64  `json:"v"`
}

// LNMStartArgs starts cached VMs (sent with their objects).
type LNMStartArgs struct {
	VMs  []*VM     `json:"vms"`
	Args StringMap `json:"args,omitempty"`
}

// LNMOpArgs applies an operation to VMs on the node.
type LNMOpArgs struct {
	Op    Op        `json:"op"`
	Names []string  `json:"names"`
	Args  StringMap `json:"args,omitempty"`
}

// LNMMigrateArgs migrates VMs to the node Target reachable at Address.
type LNMMigrateArgs struct {
	Names   []string  `json:"names"`
	Target  string    `json:"target"`
	Address string    `json:"address"`
	Args    StringMap `json:"args,omitempty"`
}

// LNMResults are per-VM outcomes of an LNM batch.
type LNMResults struct {
	Results []VMResult `json:"results"`
}

// DetailsReply answers get_details / get_status.
type DetailsReply struct {
	Domains []Domain         `json:"domains"`
	Usage   map[string]Usage `json:"usage,omitempty"`
}

// LNMReport is one frame on the LNM's event stream: state changes of
// domains and, periodically, usage reports.
type LNMReport struct {
	Changes []Domain         `json:"changes,omitempty"`
	Node    *NodeStatus      `json:"node,omitempty"`
	Usage   map[string]Usage `json:"usage,omitempty"`
	Beat    bool             `json:"beat,omitempty"` // heartbeat only
}
