// Package scripts holds the shipped Lua policies. The files are the
// source of truth; the binary carries a copy so `usher controller` and
// `usher demo` work from any directory.
package scripts
