// Package usher holds Usher's site-level tests: end to end over loopback
// TLS, Lua policies on a running site, chaos with real processes, the
// attacks of docs/security.md, libvirt hosts, and benchmarks. The code they
// exercise lives in the packages below; package site assembles it.
package usher
