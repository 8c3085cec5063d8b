package core

import (
	"context"

	"github.com/usher-vm/usher/api"
)

// StateView is the read-only view of the global state that policies see.
// Every method returns copies; callers may keep or modify them freely.
// Implementations must be cheap enough to call from a request handler:
// VM and LNM lookups are O(1), the listing calls are O(result).
type StateView interface {
	// VM returns one VM by full name.
	VM(name string) (*api.VM, bool)
	// VMsOf returns the VMs of one owner (cluster "" = all clusters).
	VMsOf(owner, cluster string) []*api.VM
	// VMsOn returns the VMs placed on one LNM.
	VMsOn(lnm string) []*api.VM
	// CountOf returns how many VMs an owner has (cheap; used by quotas).
	CountOf(owner string) int
	// LNM returns one LNM by name.
	LNM(name string) (*api.LNM, bool)
	// LNMs returns every known LNM, connected or not, sorted by name.
	LNMs() []*api.LNM
	// Clusters returns the virtual clusters of one owner ("" = all).
	Clusters(owner string) []api.Cluster
	// Domain is the Usher domain VM names end with.
	Domain() string
}

// Actions are what timer-driven policies may do. They run with the
// identity given (usually the system identity) through the same pipeline as
// client requests, hooks included.
type Actions interface {
	OpOn(ctx context.Context, id api.Identity, args api.OpArgs) (*api.Result, error)
	Migrate(ctx context.Context, id api.Identity, args api.MigrateArgs) (*api.Result, error)
}

// NodeActions are what node lifecycle policies (drain, failover) may do
// besides Actions; the controller implements them. SetLNMModeBy and
// SetLNMNotice change a node's mode or notice (by names the script);
// Fence runs the site's fencing command against a lost node; Failover
// restarts lost VMs of fenced nodes elsewhere.
type NodeActions interface {
	SetLNMModeBy(name string, mode api.NodeMode, reason, by string) (*api.LNM, error)
	SetLNMNotice(name, notice string) error
	Fence(ctx context.Context, name string) error
	Failover(ctx context.Context, id api.Identity, args api.MigrateArgs) (*api.Result, error)
}

// SystemIdentity is the identity internal policies act as.
func SystemIdentity() api.Identity {
	return api.Identity{User: "usher", Groups: []string{"admin"}, Admin: true}
}
