package fakes

import (
	"crypto/rand"
	stdsql "database/sql"
	"errors"
	"fmt"
	"net"
	"sync"

	mdns "github.com/miekg/dns"
	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/dns"
	"github.com/usher-vm/usher/lua/modules/fs"
	"github.com/usher-vm/usher/lua/modules/ldap"
	"github.com/usher-vm/usher/lua/modules/sql"
)

// Set is one set of stand-ins, shared by every script of the host it is
// given to. Scripts seed and break it from their config:
//
//	fake_ldap     = {{dn = "uid=alice,ou=people,dc=x", uid = "alice", userPassword = "pw"}, …}
//	fake_dns_keys = {"usher-key."}          -- keys the fake DNS server accepts
//	fake_fs_roots = {"/srv/usher"}           -- default {"/srv/usher"}
//	fake_down     = {"ldap", "dns", "fs"}   -- these fail as if unreachable
type Set struct {
	ldap *LDAP
	dns  *DNS
	fs   *FS
	mods []lua.Module

	mu     sync.Mutex
	seeded map[string]bool
}

// New makes an empty set with its own in-memory database.
func New() (*Set, error) {
	name := "usher-fake-" + rand.Text()
	db, err := stdsql.Open("sqlite", "file:"+name+"?mode=memory&cache=shared")
	if err != nil {
		return nil, fmt.Errorf("fake sql: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	s := &Set{
		ldap:   &LDAP{entries: map[string]ldap.Entry{}},
		dns:    &DNS{records: map[string][]string{}, keys: map[string]bool{}},
		fs:     &FS{nodes: map[string]Node{}},
		seeded: map[string]bool{},
	}
	s.mods = []lua.Module{
		seeding{ldap.New(s.ldap), s},
		seeding{dns.New(s.dns), s},
		seeding{sql.New(db, "sqlite"), s},
		seeding{fs.New(s.fs), s},
	}
	return s, nil
}

// Modules are the ldap, dns, sql and fs modules over the set, for one
// host (lua.Options.Modules), which closes them.
func (s *Set) Modules() []lua.Module { return s.mods }

// LDAP is the fake directory.
func (s *Set) LDAP() *LDAP { return s.ldap }

// DNS is the fake name server.
func (s *Set) DNS() *DNS { return s.dns }

// FS is the fake directory tree.
func (s *Set) FS() *FS { return s.fs }

// seeding is a module whose tables seed the set from the script's config
// first.
type seeding struct {
	lua.Module
	set *Set
}

func (m seeding) Table(st *lua.ModuleState) *glua.LTable {
	m.set.seed(st.Config())
	return m.Module.Table(st)
}

// seed applies a script's fake_* config once per distinct config.
func (s *Set) seed(cfg map[string]any) {
	key := fmt.Sprint(cfg["fake_ldap"], cfg["fake_dns_keys"], cfg["fake_fs_roots"], cfg["fake_down"])
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seeded[key] {
		return
	}
	s.seeded[key] = true
	if es, ok := cfg["fake_ldap"].([]any); ok {
		for _, e := range es {
			m, _ := e.(map[string]any)
			dn, _ := m["dn"].(string)
			if dn == "" {
				continue
			}
			attrs := map[string][]string{}
			for k, v := range m {
				if k == "dn" {
					continue
				}
				attrs[k] = anyStrings(v)
			}
			s.ldap.Put(dn, attrs)
		}
	}
	for _, k := range anyStrings(cfg["fake_dns_keys"]) {
		s.dns.mu.Lock()
		s.dns.keys[mdns.Fqdn(k)] = true
		s.dns.mu.Unlock()
	}
	roots := anyStrings(cfg["fake_fs_roots"])
	if len(roots) == 0 {
		roots = []string{"/srv/usher"}
	}
	s.fs.mu.Lock()
	for _, r := range roots {
		found := false
		for _, have := range s.fs.roots {
			found = found || have == r
		}
		if !found {
			s.fs.roots = append(s.fs.roots, r)
		}
	}
	s.fs.mu.Unlock()
	for _, d := range anyStrings(cfg["fake_down"]) {
		switch d {
		case "ldap":
			s.ldap.down.Store(true)
		case "dns":
			s.dns.down.Store(true)
		case "fs":
			s.fs.down.Store(true)
		}
	}
}

func anyStrings(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, fmt.Sprint(e))
		}
		return out
	case nil:
		return nil
	}
	return []string{fmt.Sprint(v)}
}

// errDown is what a server that is down gives.
func errDown() error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused (fake server down)")}
}
