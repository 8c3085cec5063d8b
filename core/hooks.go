package core

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/usher-vm/usher/api"
)

// Credentials are what a user presents to the authentication chain.
type Credentials struct {
	User     string
	Password string
	Remote   string // peer address, for logging and policy
}

// RequestKind names what a client asked for.
type RequestKind string

// Request kinds.
const (
	KindStart       RequestKind = "start"
	KindOp          RequestKind = "op"
	KindMigrate     RequestKind = "migrate"
	KindList        RequestKind = "list"
	KindListLNMs    RequestKind = "list_lnms"
	KindForget      RequestKind = "forget"
	KindConsole     RequestKind = "console"
	KindFailover    RequestKind = "failover"    // restart of a fenced node's lost VMs (migrate_request chain)
	KindReservation RequestKind = "reservation" // an owner extends a reservation (authorize; args action, id, owner, start, end, new_end)
)

// ReqVM is one VM of a request as the controller resolved it. For a start
// it is the new VM (MemMB and VCPUs as asked for); for an op or a migrate
// an existing VM (its node, state, allocation and data).
type ReqVM struct {
	Name    string // full name
	Short   string
	Owner   string
	Cluster string
	LNM     string      // op, migrate: the node it is on
	State   api.VMState // op, migrate
	MemMB   int
	VCPUs   int
	Data    api.StringMap // op, migrate: its policy data
}

// Request is what a client, or a timer policy, asked for, as the
// controller resolved it. Policies read it and change nothing in it: what
// the chain decides goes into a Decision, and the controller executes the
// Decision.
type Request struct {
	ID      string       // client request id (idempotency)
	Kind    RequestKind  // start, op, migrate, list…
	User    api.Identity // who asks
	Op      api.Op       // op: the operation asked for
	Cluster string       // start: the cluster
	VMs     []ReqVM      // the VMs concerned
	LNMs    []string     // suggested nodes
	Args    api.StringMap
	All     bool // list: everyone's VMs
	DryRun  bool // plan: change nothing
	Force   bool // op: a shutdown or reboot the guest does not honour in time is forced
}

// Decision is what the policy chain decided about a Request: the request
// as its handlers left it. Each handler sees the decision so far and may
// change what FieldRules allow in its event; the controller executes the
// final decision (and nothing else), so the trace and what runs agree.
type Decision struct {
	Op      api.Op        // op: the operation to execute
	Args    api.StringMap // the arguments later handlers and register_vm see
	LNMs    []string      // the nodes suggested to later handlers
	VMs     []VMDecision  // one per Request.VMs, same order
	Dropped []api.Drop    // VMs removed from the request, with why
	Trace   []api.TraceStep
}

// VMDecision is what was decided about one VM of a request.
type VMDecision struct {
	Dropped bool
	LNM     string        // start: the node it starts on; op, migrate: where it is
	Target  string        // migrate: the node it moves to
	MemMB   int           // start: its allocation
	VCPUs   int           // start
	Data    api.StringMap // start: its policy data (kept in its object, given to its node)
}

// NewDecision is the decision that executes req as asked: every VM kept,
// nothing chosen yet.
func NewDecision(req *Request) *Decision {
	d := &Decision{Op: req.Op, Args: req.Args, LNMs: req.LNMs, VMs: make([]VMDecision, len(req.VMs))}
	for i := range req.VMs {
		v := &req.VMs[i]
		d.VMs[i] = VMDecision{LNM: v.LNM, MemMB: v.MemMB, VCPUs: v.VCPUs, Data: v.Data}
	}
	return d
}

// Drop removes VM i from the request, recording why and by whom (the
// first drop of a VM counts).
func (d *Decision) Drop(req *Request, i int, reason, by string) {
	if d.VMs[i].Dropped {
		return
	}
	d.VMs[i].Dropped = true
	d.Dropped = append(d.Dropped, api.Drop{VM: req.VMs[i].Name, Reason: reason, By: by})
}

// DropName drops the VM named name; it reports whether the request held it.
func (d *Decision) DropName(req *Request, name, reason, by string) bool {
	for i := range req.VMs {
		if req.VMs[i].Name == name && !d.VMs[i].Dropped {
			d.Drop(req, i, reason, by)
			return true
		}
	}
	return false
}

// Kept counts the VMs not dropped.
func (d *Decision) Kept() int {
	n := 0
	for i := range d.VMs {
		if !d.VMs[i].Dropped {
			n++
		}
	}
	return n
}

// Field names a part of a Decision a policy may change.
type Field string

// The fields of a decision.
const (
	FieldVMs    Field = "vms"    // drop VMs from the request
	FieldOp     Field = "op"     // the operation executed
	FieldArgs   Field = "args"   // the arguments later handlers see
	FieldLNMs   Field = "lnms"   // the nodes suggested to later handlers
	FieldLNM    Field = "lnm"    // a VM's node (placement)
	FieldTarget Field = "target" // a VM's migration target
	FieldMemMB  Field = "mem_mb" // a new VM's memory
	FieldVCPUs  Field = "vcpus"  // a new VM's vCPUs
	FieldData   Field = "data"   // a new VM's policy data
)

// FieldRule says in which request events a handler may change a field,
// and what the change means.
type FieldRule struct {
	Field  Field
	Events []string
	Means  string
}

// fieldRules is the one declaration of what policies may change: data,
// never modified (FieldRules hands out copies).
var fieldRules = [...]FieldRule{
	{FieldVMs, []string{api.EvAuthorize, api.EvStartRequest, api.EvOpRequest, api.EvMigrateRequest},
		"removing a VM from req.vms (or req:drop) drops it from the request: it is reported as dropped, with the reason, and nothing happens to it"},
	{FieldOp, []string{api.EvOpRequest},
		"the operation executed on every VM of the request instead of the one asked for (the result reports the executed op)"},
	{FieldArgs, []string{api.EvStartRequest, api.EvOpRequest, api.EvMigrateRequest},
		"the arguments later handlers and register_vm see; they never reach a node"},
	{FieldLNMs, []string{api.EvStartRequest, api.EvMigrateRequest},
		"the nodes suggested to later handlers"},
	{FieldLNM, []string{api.EvStartRequest},
		"the node the new VM starts on (placement); it must be connected when the request executes"},
	{FieldTarget, []string{api.EvMigrateRequest},
		"the node the VM migrates to; it must be connected and another than the VM's"},
	{FieldMemMB, []string{api.EvStartRequest},
		"the new VM's memory in MiB (1 to 16,777,216)"},
	{FieldVCPUs, []string{api.EvStartRequest},
		"the new VM's virtual CPUs (1 to 4,096)"},
	{FieldData, []string{api.EvStartRequest, api.EvRegisterVM},
		"the new VM's policy data: kept in its object, shown to clients and given to its node (the driver reads image, kernel, ip, mac…)"},
}

// FieldRules is the one declaration of what policies may change. The Lua
// host raises at the script's line when a handler assigns anything else;
// the controller executes the decision as these rules describe it.
func FieldRules() []FieldRule {
	out := make([]FieldRule, len(fieldRules))
	for i, r := range fieldRules {
		r.Events = slices.Clone(r.Events)
		out[i] = r
	}
	return out
}

// Writable says whether a handler of event may change field f; the error
// names the field and where it may change. It allocates nothing when the
// change is allowed (handlers ask on every assignment).
func Writable(event string, f Field) error {
	for i := range fieldRules {
		r := &fieldRules[i]
		if r.Field != f {
			continue
		}
		if slices.Contains(r.Events, event) {
			return nil
		}
		return fmt.Errorf("%s cannot change in %s (only in %v)", f, event, r.Events)
	}
	return fmt.Errorf("%s is read-only", f)
}

// Clone returns a copy of d that shares nothing writable with it.
func (d *Decision) Clone() *Decision {
	c := *d
	c.Args = maps.Clone(d.Args)
	c.LNMs = slices.Clone(d.LNMs)
	c.VMs = slices.Clone(d.VMs)
	for i := range c.VMs {
		c.VMs[i].Data = maps.Clone(c.VMs[i].Data)
	}
	c.Dropped = slices.Clone(d.Dropped)
	c.Trace = slices.Clone(d.Trace)
	return &c
}

// RejectError is returned by a hook that rejects a request outright.
type RejectError struct {
	Event   string
	Handler string
	Reason  string
}

func (e *RejectError) Error() string {
	if e.Handler != "" {
		return fmt.Sprintf("%s rejected by %s: %s", e.Event, e.Handler, e.Reason)
	}
	return fmt.Sprintf("%s rejected: %s", e.Event, e.Reason)
}

// Unwrap makes a rejection api.ErrRejected on the wire.
func (e *RejectError) Unwrap() error { return api.ErrRejected }

// Hooks is the policy boundary of the controller. Every decision the paper
// leaves to plugins goes through it; the Lua host is its production
// implementation, tests may supply a Go double. Implementations must be safe
// for concurrent use and honour ctx deadlines. They read the Request and
// change only the Decision, as FieldRules allow.
type Hooks interface {
	// Authenticate runs the authentication chain; an error (wrapping
	// api.ErrUnauthorized, or any) refuses the user.
	Authenticate(ctx context.Context, c Credentials) (api.Identity, error)
	// Authorize runs the authorize chain for a request. It may drop VMs
	// (with reasons) or return a *RejectError.
	Authorize(ctx context.Context, req *Request, d *Decision) error
	// Request runs a request event chain (start_request, migrate_request,
	// op_request) in order; handlers change d or reject the request.
	Request(ctx context.Context, event string, req *Request, d *Decision) error
	// RegisterVM fires before VM i of a start is registered; it may set
	// d.VMs[i].Data. An error keeps that VM from starting.
	RegisterVM(ctx context.Context, req *Request, d *Decision, i int) error
	// Notify delivers a notification event. It must not block the caller.
	Notify(ev api.Event)
}

// EventWanter is implemented by Hooks that can tell whether any plugin
// handles a notification event. The controller asks before building an
// event only plugins would see (PluginsOnly), so a restart's million
// adoptions cost nothing when no policy listens to state_changed. Hooks
// without it get every event.
type EventWanter interface {
	Wants(event string) bool
}
