package apitest

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/usher-vm/usher/api"
)

// Node is a fake LNM: guests in memory, a cache of the controller's
// objects, every call recorded. By default it behaves as an LNM with a
// perfect hypervisor; a test sets the On* functions to change a method
// (they run instead of the default and may call Default* to get it).
// Peers, keyed by node name, receive the guests Migrate sends them.
type Node struct {
	Name string

	mu     sync.Mutex
	guests map[string]api.Guest
	cache  map[string]*api.VM
	calls  []string
	Peers  map[string]*Node

	OnStart   func(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error)
	OnOp      func(ctx context.Context, a api.LNMOpArgs) (api.LNMResults, error)
	OnPrepare func(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error)
	OnAbort   func(ctx context.Context, a api.NamesArgs) (api.LNMResults, error)
	OnMigrate func(ctx context.Context, a api.LNMMigrateArgs) (api.LNMResults, error)
	OnDetails func(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error)
	// Synced receives every Sync (buffered; full syncs are dropped).
	Synced chan api.ReceiveArgs
}

var _ api.Node = (*Node)(nil)

// NewNode returns a fake LNM named name.
func NewNode(name string) *Node {
	return &Node{Name: name, guests: map[string]api.Guest{}, cache: map[string]*api.VM{}, Peers: map[string]*Node{},
		Synced: make(chan api.ReceiveArgs, 16)}
}

// ErrDown is what a failing link returns.
var ErrDown = errors.New("apitest: link down")

func (n *Node) record(m string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, m)
}

// Calls returns the methods called so far, in order.
func (n *Node) Calls() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.calls)
}

// Called reports whether method m was called.
func (n *Node) Called(m string) bool { return slices.Contains(n.Calls(), m) }

// Put places a guest on the node's hypervisor.
func (n *Node) Put(g api.Guest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.guests[g.Name] = g
}

// Guest returns a guest of the hypervisor.
func (n *Node) Guest(name string) (api.Guest, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	g, ok := n.guests[name]
	return g, ok
}

// Guests returns every guest, with the cached object of each.
func (n *Node) Guests() []api.Guest {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]api.Guest, 0, len(n.guests))
	for _, g := range n.guests {
		if c := n.cache[g.Name]; c != nil {
			g.Cached = c.Clone()
		}
		out = append(out, g)
	}
	return out
}

// Cached returns the cached object of a VM.
func (n *Node) Cached(name string) (*api.VM, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.cache[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

// NodeInfo implements api.Node.
func (n *Node) NodeInfo(context.Context) (api.NodeInfo, error) {
	n.record("get_node_info")
	return api.NodeInfo{Name: n.Name, CPUs: 64, MemMB: 1 << 20}, nil
}

// NodeStatus implements api.Node.
func (n *Node) NodeStatus(context.Context) (api.NodeStatus, error) {
	n.record("get_node_status")
	return api.NodeStatus{}, nil
}

// ListGuests implements api.Node.
func (n *Node) ListGuests(context.Context) (api.GuestsReply, error) {
	n.record("list_guests")
	return api.GuestsReply{Guests: n.Guests()}, nil
}

// Details implements api.Node.
func (n *Node) Details(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error) {
	n.record("get_details")
	if n.OnDetails != nil {
		return n.OnDetails(ctx, a)
	}
	return n.DefaultDetails(a), nil
}

// DefaultDetails is Details' default.
func (n *Node) DefaultDetails(a api.NamesArgs) api.GuestsReply {
	var out api.GuestsReply
	for _, g := range n.Guests() {
		if slices.Contains(a.Names, g.Name) {
			out.Guests = append(out.Guests, g)
		}
	}
	return out
}

// Status implements api.Node.
func (n *Node) Status(context.Context, api.NamesArgs) (api.GuestsReply, error) {
	n.record("get_status")
	return api.GuestsReply{}, nil
}

func (n *Node) receiveLocked(a api.ReceiveArgs) {
	for _, v := range a.VMs {
		if old := n.cache[v.Name]; old == nil || old.Version <= v.Version {
			n.cache[v.Name] = v.Clone()
		}
	}
	for _, u := range a.States {
		if c := n.cache[u.Name]; c != nil && c.Version <= u.Version {
			c.State, c.Reason, c.Version = u.State, u.Reason, u.Version
		}
	}
}

// Receive implements api.Node.
func (n *Node) Receive(_ context.Context, a api.ReceiveArgs) error {
	n.record("receive")
	n.mu.Lock()
	defer n.mu.Unlock()
	n.receiveLocked(a)
	return nil
}

// Sync implements api.Node.
func (n *Node) Sync(_ context.Context, a api.ReceiveArgs) error {
	n.record("sync")
	n.mu.Lock()
	keep := map[string]bool{}
	for _, v := range a.VMs {
		keep[v.Name] = true
	}
	for _, u := range a.States {
		keep[u.Name] = true
	}
	maps.DeleteFunc(n.cache, func(k string, _ *api.VM) bool { return !keep[k] })
	n.receiveLocked(a)
	n.mu.Unlock()
	select {
	case n.Synced <- a:
	default:
	}
	return nil
}

// Forget implements api.Node.
func (n *Node) Forget(_ context.Context, a api.NamesArgs) error {
	n.record("forget")
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range a.Names {
		delete(n.cache, name)
	}
	return nil
}

// Start implements api.Node.
func (n *Node) Start(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	n.record("start")
	if n.OnStart != nil {
		return n.OnStart(ctx, a)
	}
	return n.DefaultStart(a), nil
}

// DefaultStart boots every VM and caches its object as an LNM does.
func (n *Node) DefaultStart(a api.LNMStartArgs) api.LNMResults {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out api.LNMResults
	for _, v := range a.VMs {
		c := v.Clone()
		c.State, c.Reason = api.StateRunning, api.ReasonStarted
		c.Version++
		n.cache[v.Name] = c
		n.guests[v.Name] = api.Guest{Name: v.Name, State: api.StateRunning, MemMB: v.MemMB, VCPUs: v.VCPUs}
		out.Results = append(out.Results, api.VMResult{Name: v.Name, OK: true, State: api.StateRunning, Cached: c.Version})
	}
	return out
}

// OpOn implements api.Node.
func (n *Node) OpOn(ctx context.Context, a api.LNMOpArgs) (api.LNMResults, error) {
	n.record("op_on:" + string(a.Op))
	if n.OnOp != nil {
		return n.OnOp(ctx, a)
	}
	return n.DefaultOp(a), nil
}

// DefaultOp applies the operation to every named guest.
func (n *Node) DefaultOp(a api.LNMOpArgs) api.LNMResults {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out api.LNMResults
	for _, name := range a.Names {
		g, ok := n.guests[name]
		if !ok {
			if a.Op == api.OpDestroy {
				out.Results = append(out.Results, api.VMResult{Name: name, OK: true, State: api.StateDestroyed})
				continue
			}
			out.Results = append(out.Results, api.VMResult{Name: name, Error: "no such guest"})
			continue
		}
		st := a.Op.Leaves()
		if a.Op == api.OpDestroy {
			delete(n.guests, name)
			delete(n.cache, name)
		} else {
			g.State = st
			n.guests[name] = g
		}
		out.Results = append(out.Results, api.VMResult{Name: name, OK: true, State: st})
	}
	return out
}

// PrepareMigration implements api.Node.
func (n *Node) PrepareMigration(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	n.record("prepare_migration")
	if n.OnPrepare != nil {
		return n.OnPrepare(ctx, a)
	}
	var out api.LNMResults
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, v := range a.VMs {
		c := v.Clone()
		c.State = api.StateMigrating
		n.cache[v.Name] = c
		out.Results = append(out.Results, api.VMResult{Name: v.Name, OK: true})
	}
	return out, nil
}

// AbortMigration implements api.Node.
func (n *Node) AbortMigration(ctx context.Context, a api.NamesArgs) (api.LNMResults, error) {
	n.record("abort_migration")
	if n.OnAbort != nil {
		return n.OnAbort(ctx, a)
	}
	var out api.LNMResults
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range a.Names {
		if c := n.cache[name]; c != nil && c.State == api.StateMigrating {
			delete(n.cache, name)
		}
		// An abort removes what the node holds of the VM: a migrated
		// guest aborted away is lost, which the controller must never do.
		delete(n.guests, name)
		out.Results = append(out.Results, api.VMResult{Name: name, OK: true})
	}
	return out, nil
}

// Migrate implements api.Node.
func (n *Node) Migrate(ctx context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
	n.record("migrate")
	if n.OnMigrate != nil {
		return n.OnMigrate(ctx, a)
	}
	return n.DefaultMigrate(a), nil
}

// DefaultMigrate moves every named guest to the peer named Target.
func (n *Node) DefaultMigrate(a api.LNMMigrateArgs) api.LNMResults {
	var out api.LNMResults
	for _, name := range a.Names {
		n.mu.Lock()
		g, ok := n.guests[name]
		if ok {
			delete(n.guests, name)
			delete(n.cache, name)
		}
		peer := n.Peers[a.Target]
		n.mu.Unlock()
		if !ok {
			out.Results = append(out.Results, api.VMResult{Name: name, Error: "no such guest"})
			continue
		}
		if peer != nil {
			peer.Put(g)
		}
		out.Results = append(out.Results, api.VMResult{Name: name, OK: true, State: g.State})
	}
	return out
}
