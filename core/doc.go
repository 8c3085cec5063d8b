// Package core is the mechanism of the Usher controller: the global state
// (VMs, LNMs, virtual clusters, and the lost, missing, unmanaged and
// conflict lists, with exact capacity accounting), the request pipeline
// (authenticate → authorize → start_request / op_request / migrate_request
// → register_vm → batched calls to the nodes → *_complete →
// state_changed), adoption and crash recovery, and event fan-out to
// clients and plugins.
//
// Policy is not here: each request is a read-only Request, and the chain
// of Hooks (in production the Lua host, package lua) returns a Decision
// whose fields change only as FieldRules declare; the controller executes
// the decision and nothing else. I/O is not here either: nodes are reached
// through api.Node, clients through package controller. Controller.Close
// stops every goroutine the controller started. core imports only api and
// the standard library.
package core
