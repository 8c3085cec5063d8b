// Package fs is the fs module of Usher's policies: the Lua table scripts
// use to create and remove directories and write small files below
// configured roots (docs/lua-api.md, "Site modules"), its configuration
// section ([policy.modules.fs]) and the real backend, which works through
// os.Root and refuses "..", paths outside the roots and any symlink on
// the way.
//
// Backend is what the Lua table calls; policy tests give it an in-memory
// stand-in (lua/modules/fakes). The package may import lua (the module
// interface and its helpers) and lua/modules/internal/section; it touches
// only the directories below its roots.
package fs
