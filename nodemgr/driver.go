package nodemgr

import (
	"context"
	"errors"
	"io"

	"github.com/usher-vm/usher/api"
)

// Spec is what a driver needs to start (or receive by migration) one VM.
type Spec struct {
	Name  string        // full VM name, the hypervisor's guest name
	MemMB int           // memory
	VCPUs int           // virtual CPUs
	Data  api.StringMap // policy data (image, kernel, ip, mac…)
}

// GuestInfo is one guest as the hypervisor reports it.
type GuestInfo struct {
	Name   string
	State  api.VMState // running, paused, shutoff, hibernated, crashed
	Reason string      // hypervisor's reason for the state, when given
	MemMB  int
	VCPUs  int
}

// GuestEvent is a lifecycle event pushed by the hypervisor. Gone means the
// guest no longer exists (destroyed, undefined, migrated away).
type GuestEvent struct {
	Name   string
	State  api.VMState
	Reason string
	Gone   bool
}

// Stats are instantaneous usage readings of the node and of each guest.
type Stats struct {
	Node   Sample
	Guests map[string]Sample
}

// OpOptions modify an operation.
type OpOptions struct {
	// Force makes a shutdown or reboot the guest does not honour in time
	// a hard stop or reset.
	Force bool
}

// Capabilities are what drivers differ in; the LNM and the controller
// adapt to them.
type Capabilities struct {
	// Events: the driver pushes lifecycle events (else the LNM relies on
	// its scans alone).
	Events bool
	// PrepareIncoming: the target of a migration must prepare for it
	// (the simulated hypervisor); false for peer-to-peer hypervisors.
	PrepareIncoming bool
	// LiveMigration: running guests move without stopping.
	LiveMigration bool
	// Persistent: guests outlive the LNM process.
	Persistent bool
}

// ErrNoGuest is wrapped by drivers' errors about a guest that does not
// exist.
var ErrNoGuest = errors.New("no such guest")

// Driver is the VMM boundary of an LNM: the one interface the simulated and
// the libvirt hypervisors implement. Every method honours ctx (drivers whose
// library takes no context wrap calls with timeouts). Methods are called
// concurrently; drivers must be safe for that.
type Driver interface {
	// Kind names the driver ("sim", "libvirt").
	Kind() string
	// Capabilities says what the driver can do.
	Capabilities() Capabilities
	// NodeInfo returns the node's physical characteristics.
	NodeInfo(ctx context.Context) (api.NodeInfo, error)
	// List returns every guest on the node, managed or not.
	List(ctx context.Context) ([]GuestInfo, error)
	// Start creates and boots a guest; it returns once the guest runs
	// (or failed to). Insufficient capacity is an error saying so.
	Start(ctx context.Context, spec Spec) error
	// Op applies a Table 3 operation to a guest and returns when done.
	// Destroy removes the guest. An unknown guest is an error wrapping
	// ErrNoGuest.
	Op(ctx context.Context, name string, op api.Op, o OpOptions) error
	// PrepareIncoming readies the destination of a migration (a no-op for
	// hypervisors that migrate peer to peer); AbortIncoming undoes it.
	PrepareIncoming(ctx context.Context, spec Spec) error
	AbortIncoming(ctx context.Context, name string) error
	// Migrate live-migrates a running guest to the node reachable at
	// address (the target LNM's advertised migration address). On failure
	// the guest keeps running here.
	Migrate(ctx context.Context, name, target, address string) error
	// Stats samples usage now.
	Stats(ctx context.Context) (Stats, error)
	// Events delivers lifecycle events; nil if the driver has none (the LNM
	// then relies on scans). The channel is closed by Close.
	Events() <-chan GuestEvent
	// Close releases the driver. Guests keep running.
	Close() error
}

// Consoler is implemented by drivers whose guests have a serial console
// a user may attach to (ush console).
type Consoler interface {
	// ConsoleLog returns up to max bytes from the end of what the guest
	// printed on its console (its boot log), also from before this LNM
	// started and from before a migration.
	ConsoleLog(ctx context.Context, name string, max int) ([]byte, error)
	// Console attaches to the guest's console: reads are what it prints,
	// writes are keystrokes. Close detaches.
	Console(ctx context.Context, name string) (io.ReadWriteCloser, error)
}
