// Package scripts holds the shipped Lua policies. The files are the
// source of truth; the binary carries a copy so `usher controller` and
// `usher demo` work from any directory.
package scripts

import "embed"

// FS holds every shipped *.lua file (tests excluded at load time) and the
// shared libraries in lib/ (loaded by require).
//
//go:embed *.lua lib/*.lua
var FS embed.FS
