package modules

import (
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/dns"
	"github.com/usher-vm/usher/lua/modules/fs"
	"github.com/usher-vm/usher/lua/modules/internal/section"
	"github.com/usher-vm/usher/lua/modules/ldap"
	"github.com/usher-vm/usher/lua/modules/sql"
)

// Kind is one module.
type Kind struct {
	Name string // the Lua global and the section: [policy.modules.<Name>]
	Help string
	// New makes the module from its section; timeout bounds one network
	// or database call.
	New func(section map[string]any, timeout time.Duration) (lua.Module, error)
}

// Kinds lists every module.
func Kinds() []Kind {
	return []Kind{
		{Name: ldap.Name, Help: "LDAP searches, binds and writes on the listed servers (servers, ca_file, plain_loopback, pool_size, binds.<name> = {dn, password_file})", New: ldap.Open},
		{Name: dns.Name, Help: "TSIG-signed RFC 2136 updates and lookups on the listed servers (servers, keys.<name> = {algorithm, secret_file})", New: dns.Open},
		{Name: sql.Name, Help: "parameterised statements on one database (path: an SQLite file, or dsn: PostgreSQL)", New: sql.Open},
		{Name: fs.Name, Help: "directories and small files below the listed roots (roots)", New: fs.Open},
	}
}

// Names lists the modules' names.
func Names() []string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, k.Name)
	}
	return out
}

// Open reads the [policy.modules] table and makes the modules it
// configures, with the call timeout (DefaultTimeout when unset):
//
//	[policy.modules]
//	timeout = "5s"
//	[policy.modules.ldap]
//	servers = ["ldaps://ldap.example.org"]
//	[policy.modules.sql]
//	path = "/var/lib/usher/site.db"
//
// A module without a section is not made: scripts see no global of its
// name. An unknown key is an error naming the known ones. On error no
// module is left open.
func Open(m map[string]any) ([]lua.Module, time.Duration, error) {
	r := section.New("policy.modules", m)
	timeout := lua.DefaultModuleTimeout
	switch v := m["timeout"].(type) {
	case nil:
	case string:
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			r.Failf("timeout", "want a positive duration like \"5s\", not %q", v)
		} else {
			timeout = d
		}
	case int64:
		if v <= 0 {
			r.Failf("timeout", "want a positive number of seconds")
		} else {
			timeout = time.Duration(v) * time.Second
		}
	default:
		r.Failf("timeout", "want a duration like \"5s\"")
	}
	kinds := map[string]Kind{}
	for _, k := range Kinds() {
		kinds[k.Name] = k
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, ok := kinds[k]; ok || k == "timeout" {
			continue
		}
		r.Failf(k, "unknown key (known: timeout, %s)", strings.Join(Names(), ", "))
	}
	var mods []lua.Module
	var errs []error
	for _, k := range Kinds() {
		if _, ok := m[k.Name]; !ok {
			continue
		}
		sec := r.Table(k.Name)
		if sec.M == nil {
			continue // not a table: reported
		}
		mod, err := k.New(sec.M, timeout)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		mods = append(mods, mod)
	}
	if err := errors.Join(append([]error{r.Err()}, errs...)...); err != nil {
		for _, mod := range mods {
			mod.Close()
		}
		return nil, 0, err
	}
	return mods, timeout, nil
}
