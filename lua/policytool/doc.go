// Package policytool is policy tooling without a controller: Check (what
// `usher policy check` runs) validates scripts, RunTests (`usher policy
// test`) runs the *_test.lua fixture tests with the usher_test module
// (docs/lua-api.md, "Testing policies"), and FixtureView is the
// in-memory core.StateView they run against, also for Go tests and
// benchmarks.
//
// Test runs give every host the in-memory stand-ins of the site modules
// (lua/modules/fakes), seeded from the scripts' config; they never reach
// a server. It may import lua, lua/modules/fakes, core and api; it reads
// the scripts and test files it is given.
package policytool
