// Package fakes holds in-memory stand-ins for the site-integration
// modules: an LDAP tree, a DNS record set and a directory tree behind the
// real ldap, dns and fs tables, and an in-memory SQLite database behind
// the real sql table, so scripts see exactly the Lua API, messages and
// return conventions they get in production. Policy fixture tests
// (lua/policytool, `usher policy test`) install them in every host they
// run; scripts seed them from their config (fake_ldap, fake_dns_keys,
// fake_fs_roots, fake_down).
//
// Only lua/policytool and tests import this package; the composition root
// (site) and the controller never do, so no configuration reaches it. It
// may import lua and the module packages; it touches no server, file or
// directory.
package fakes
