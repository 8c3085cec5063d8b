// Package coretest provides a Go test double of core.Hooks: fixed users,
// owner-only authorization, round-robin placement and migration to the
// first suggested node. Tests of the mechanism use it; production runs the
// Lua host.
package coretest
