package core

import "context"

// StateView is the read-only view of the global state that policies see.
// Every method returns copies; callers may keep or modify them freely.
// Implementations must be cheap enough to call from a request handler:
// VM and LNM lookups are O(1), the listing calls are O(result).
type StateView interface {
	// VM returns one VM by full name.
	VM(name string) (*VM, bool)
	// VMsOf returns the VMs of one owner (cluster "" = all clusters).
	VMsOf(owner, cluster string) []*VM
	// VMsOn returns the VMs placed on one LNM.
	VMsOn(lnm string) []*VM
	// CountOf returns how many VMs an owner has (cheap; used by quotas).
	CountOf(owner string) int
	// LNM returns one LNM by name.
	LNM(name string) (*LNM, bool)
	// LNMs returns every known LNM, connected or not, sorted by name.
	LNMs() []*LNM
	// Clusters returns the virtual clusters of one owner ("" = all).
	Clusters(owner string) []Cluster
	// Domain is the Usher domain VM names end with.
	Domain() string
}

// Actions are what timer-driven policies may do. They run with the
// identity given (usually the system identity) through the same pipeline as
// client requests, hooks included.
type Actions interface {
	OpOn(ctx context.Context, id Identity, args OpArgs) (*Result, error)
	Migrate(ctx context.Context, id Identity, args MigrateArgs) (*Result, error)
}

// SystemIdentity is the identity internal policies act as.
func SystemIdentity() Identity {
	return Identity{User: "usher", Groups: []string{"admin"}, Admin: true}
}
