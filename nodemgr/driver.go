package nodemgr

import (
	"context"

	"github.com/usher-vm/usher/core"
)

// Spec is what a driver needs to start (or receive by migration) one VM.
type Spec struct {
	Name  string            // full VM name, the hypervisor's domain name
	MemMB int               // memory
	VCPUs int               // virtual CPUs
	Data  map[string]string // policy data (ip, mac, image, kernel…)
	Args  map[string]string // extra request arguments
}

// DomainInfo is one domain as the hypervisor reports it.
type DomainInfo struct {
	Name   string
	State  core.VMState // running, paused, shutoff, hibernated, crashed
	Reason string       // hypervisor's reason for the state, when given
	MemMB  int
	VCPUs  int
}

// DomainEvent is a lifecycle event pushed by the hypervisor. Gone means the
// domain no longer exists (destroyed, undefined, migrated away).
type DomainEvent struct {
	Name   string
	State  core.VMState
	Reason string
	Gone   bool
}

// Stats are instantaneous usage readings of the node and of each domain.
type Stats struct {
	Node    core.Sample
	Domains map[string]core.Sample
}

// Driver is the VMM boundary of an LNM: the one interface the simulated and
// the libvirt hypervisors implement. Every method honours ctx (drivers whose
// library takes no context wrap calls with timeouts). Methods are called
// concurrently; drivers must be safe for that.
type Driver interface {
	// Kind names the driver ("sim", "libvirt").
	Kind() string
	// NodeInfo returns the node's physical characteristics.
	NodeInfo(ctx context.Context) (core.NodeInfo, error)
	// List returns every domain on the node, managed or not.
	List(ctx context.Context) ([]DomainInfo, error)
	// Start creates and boots a domain; it returns once the domain runs
	// (or failed to). Insufficient capacity is an error saying so.
	Start(ctx context.Context, spec Spec) error
	// Op applies a Table 3 operation to a domain and returns when done.
	// Destroy removes the domain.
	Op(ctx context.Context, name string, op core.Op, args map[string]string) error
	// PrepareIncoming readies the destination of a migration (a no-op for
	// hypervisors that migrate peer to peer); AbortIncoming undoes it.
	PrepareIncoming(ctx context.Context, spec Spec) error
	AbortIncoming(ctx context.Context, name string) error
	// Migrate live-migrates a running domain to the node reachable at
	// address (the target LNM's advertised migration address). On failure
	// the domain keeps running here.
	Migrate(ctx context.Context, name, target, address string) error
	// Stats samples usage now.
	Stats(ctx context.Context) (Stats, error)
	// Events delivers lifecycle events; nil if the driver has none (the LNM
	// then relies on scans). The channel is closed by Close.
	Events() <-chan DomainEvent
	// Close releases the driver. Domains keep running.
	Close() error
}
