// Package sitetest holds the site integration tests (build tag site):
// the shipped UCSD policies with the real ldap, dns, sql and fs modules
// against a real OpenLDAP slapd, a real BIND named and SQLite files,
// checked with the servers' own tools (ldapsearch, dig) and SQL, and the
// IPAM crash test with real `usher controller`/`usher lnm` processes.
//
//	go test -race -count=1 -tags site ./lua/...
//
// It has no code outside its tests. The tests may import lua, the module
// packages, lua/policytool (FixtureView), client and internal/waitfor;
// they start slapd, named and usher processes on loopback from temp
// directories (as testdata/site/harness.sh does by hand) and stop
// exactly what they started.
package sitetest
