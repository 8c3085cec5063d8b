// Package core is the mechanism of the Usher controller: the global state
// (VMs, LNMs, virtual clusters, and the lost, missing and unmanaged lists),
// the request pipeline (authenticate → authorize → start_request /
// op_request / migrate_request → register_vm → batched LNM calls →
// *_complete → state_changed), event fan-out to clients and plugins, and the
// wire message types of the paper's Tables 2–4.
//
// Policy is not here: every decision goes through the Hooks interface,
// whose production implementation is the Lua host (package lua). I/O is not
// here either: LNMs are reached through the LNMLink interface and clients
// through package transport. core imports only the standard library.
package core
