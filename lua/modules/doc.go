// Package modules is the one list of the site-integration modules of
// Usher's policies (ldap, dns, sql, fs): each kind's name, what it is for
// and how to make one from its section of the configuration. The
// composition root (site) calls Open with the [policy.modules] table and
// hands the result to lua.Options; adding a module is a package
// implementing lua.Module and one entry here.
//
// It may import lua, its module packages and
// lua/modules/internal/section; never lua/modules/fakes, which only
// policy tests use.
package modules
