// Package coretest provides Go test doubles of core: Hooks (fixed users,
// owner-only authorization, round-robin placement, migration to the first
// suggested node) and View, an in-memory core.StateView. Tests of the
// mechanism and of the Lua engine, the benchmarks and the policy test
// runner (lua/policytool) use them; production runs the Lua host over the
// controller's own state.
package coretest
