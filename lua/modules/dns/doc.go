// Package dns is the dns module of Usher's policies: the Lua table
// scripts use for RFC 2136 updates signed with TSIG and for lookups
// (docs/lua-api.md, "Site modules"), its configuration section
// ([policy.modules.dns]) and the real backend, miekg/dns over TCP.
// Scripts reach only the servers the section lists and name its TSIG keys
// instead of holding their secrets.
//
// Backend is what the Lua table calls; policy tests give it an in-memory
// stand-in (lua/modules/fakes). The package may import lua (the module
// interface and its helpers), lua/modules/internal/section and
// miekg/dns; it touches only the servers of its Config.
package dns
