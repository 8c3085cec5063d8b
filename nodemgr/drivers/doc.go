// Package drivers is the one list of Usher's VMM drivers: each kind's
// name, its configuration parameters (lnm.<kind>_*) and how to make one.
// The LNM's configuration, `usher config show` and the composition root
// read it; adding a driver is a package implementing nodemgr.Driver and
// one entry here.
//
// It may import nodemgr, its driver packages and core/config.
package drivers
