package core

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Event names. Request events run as a chain that may approve, modify or
// reject a request; the others are notifications delivered asynchronously.
const (
	EvAuthenticate   = "authenticate"
	EvAuthorize      = "authorize"
	EvStartRequest   = "start_request"
	EvMigrateRequest = "migrate_request"
	EvOpRequest      = "op_request"
	EvRegisterVM     = "register_vm"
	EvStartComplete  = "start_complete"
	EvOpComplete     = "op_complete"
	EvMigrateDone    = "migrate_complete"
	EvStateChanged   = "state_changed"
	EvVMLost         = "vm_lost"
	EvVMMissing      = "vm_missing"
	EvVMUnmanaged    = "vm_unmanaged"
	EvLNMConnected   = "lnm_connected"
	EvLNMLost        = "lnm_disconnected"
	EvRecovered      = "recovered" // a restarted controller's state is whole again: to every feed
	EvError          = "error"
	EvTimer          = "timer"
)

// NotifyEvents are the events delivered through Hooks.Notify.
func NotifyEvents() []string {
	return []string{EvStartComplete, EvOpComplete, EvMigrateDone, EvStateChanged, EvVMLost,
		EvVMMissing, EvVMUnmanaged, EvLNMConnected, EvLNMLost, EvRecovered, EvError}
}

// Credentials are what a user presents to the authentication chain.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Remote   string `json:"remote"` // peer address, for logging and policy
}

// ErrAuthFailed is returned when no authentication handler accepts.
var ErrAuthFailed = errors.New("authentication failed")

// RequestKind names what a client asked for.
type RequestKind string

// Request kinds.
const (
	KindStart    RequestKind = "start"
	KindOp       RequestKind = "op"
	KindMigrate  RequestKind = "migrate"
	KindList     RequestKind = "list"
	KindListLNMs RequestKind = "list_lnms"
	KindAdmin    RequestKind = "admin"
)

// ReqVM is one VM inside a request. For start requests the VM is new and a
// placement handler sets LNM; for op and migrate it names an existing VM.
type ReqVM struct {
	Name    string            `json:"name"`             // full name
	Short   string            `json:"short"`            // short name
	Owner   string            `json:"owner"`            // owner
	Cluster string            `json:"cluster"`          // cluster
	LNM     string            `json:"lnm,omitempty"`    // chosen (start) or current (op/migrate) node
	Target  string            `json:"target,omitempty"` // migrate: destination node
	MemMB   int               `json:"mem_mb,omitempty"` // requested memory
	VCPUs   int               `json:"vcpus,omitempty"`  // requested vCPUs
	State   VMState           `json:"state,omitempty"`  // current state (op/migrate)
	Data    map[string]string `json:"data,omitempty"`   // attached by policies (ip, …)
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
	Action  string `json:"action"` // approved, modified, rejected, error
	Detail  string `json:"detail,omitempty"`
	Micros  int64  `json:"us"`
}

// Request is the object request events pass through the policy chain.
// Handlers may drop VMs, choose LNMs, attach data, or reject it.
type Request struct {
	ID       string            `json:"id"`                // client request id (idempotency)
	Kind     RequestKind       `json:"kind"`              // start, op, migrate, list…
	User     Identity          `json:"user"`              // who asks
	Op       Op                `json:"op,omitempty"`      // for op requests
	Cluster  string            `json:"cluster,omitempty"` // for start requests
	VMs      []*ReqVM          `json:"vms"`               // the VMs concerned
	LNMs     []string          `json:"lnms,omitempty"`    // suggested nodes
	Args     map[string]string `json:"args,omitempty"`    // extra client arguments
	All      bool              `json:"all,omitempty"`     // list: everyone's VMs
	Dropped  []Drop            `json:"dropped,omitempty"` // VMs removed by policy
	Rejected string            `json:"rejected,omitempty"`
	Trace    []TraceStep       `json:"trace,omitempty"`
	DryRun   bool              `json:"dry_run,omitempty"` // plan: change nothing
}

// DropVM removes the VM named name from the request, recording why.
func (r *Request) DropVM(name, reason, by string) bool {
	for i, v := range r.VMs {
		if v.Name == name {
			r.VMs = append(r.VMs[:i], r.VMs[i+1:]...)
			r.Dropped = append(r.Dropped, Drop{VM: name, Reason: reason, By: by})
			return true
		}
	}
	return false
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

// Event is a notification: delivered to plugins via Hooks.Notify and to
// clients over their event stream.
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

// Hooks is the policy boundary of the controller. Every decision the paper
// leaves to plugins goes through it; the Lua host is its production
// implementation, tests may supply a Go double. Implementations must be safe
// for concurrent use and honour ctx deadlines.
type Hooks interface {
	// Authenticate runs the authentication chain; ErrAuthFailed (or any
	// error) refuses the user.
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
	// Authorize runs the authorize chain for a request. It may drop VMs
	// (with reasons) or return a *RejectError.
	Authorize(ctx context.Context, req *Request) error
	// Request runs a request event chain (start_request, migrate_request,
	// op_request) in order; handlers may modify req or reject it.
	Request(ctx context.Context, event string, req *Request) error
	// RegisterVM fires before a VM is started; it may attach data to vm.Data.
	// An error keeps that VM from starting.
	RegisterVM(ctx context.Context, req *Request, vm *ReqVM) error
	// Notify delivers a notification event. It must not block the caller.
	Notify(ev Event)
}

// EventWanter is implemented by Hooks that can tell whether any plugin
// handles a notification event. The controller asks before building an
// event only plugins would see (PluginsOnly), so a restart's million
// adoptions cost nothing when no policy listens to state_changed. Hooks
// without it get every event.
type EventWanter interface {
	Wants(event string) bool
}

// Sentinel errors the transport maps to wire error codes.
var (
	ErrBadRequest  = errors.New("bad request")
	ErrNotFound    = errors.New("not found")
	ErrForbidden   = errors.New("forbidden")
	ErrUnavailable = errors.New("unavailable")
)
