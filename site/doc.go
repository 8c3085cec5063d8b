// Package site is Usher's one composition root: it assembles a controller
// (NewController: TLS, the state directory with its known LNMs, ticket keys
// and size hint, the policy host with its modules, crash recovery, pprof)
// and an LNM (NewLNM: certificate, driver from nodemgr/drivers, recovery
// listener) from a configuration (Params lists every parameter). `usher
// controller`, `usher lnm`, `usher demo`, the benchmarks and the tests'
// embedded sites (Start) all assemble through it, so what the demo shows
// is what production does. Run serves until its context ends; Close
// stops everything it started.
//
// It may import every package of Usher except cmd, repl and bench.
package site
