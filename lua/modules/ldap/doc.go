// Package ldap is the ldap module of Usher's policies: the Lua table
// scripts use to search, bind and write entries (docs/lua-api.md, "Site
// modules"), its configuration section ([policy.modules.ldap]) and the
// real backend, go-ldap over TLS or StartTLS with a small pool of bound
// connections. Scripts reach only the servers the section lists and name
// its service accounts instead of holding their passwords.
//
// Backend is what the Lua table calls; policy tests give it an in-memory
// stand-in (lua/modules/fakes). The package may import lua (the module
// interface and its helpers), lua/modules/internal/section and go-ldap;
// it touches only the servers of its Config.
package ldap
