package scripts

import "embed"

// FS holds every shipped *.lua file (tests excluded at load time) and the
// shared libraries in lib/ (loaded by require).
//
//go:embed *.lua lib/*.lua
var FS embed.FS
