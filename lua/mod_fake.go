package lua

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/miekg/dns"
)

// fakeSet holds in-memory stand-ins for the site modules: an LDAP tree, a
// DNS record set, a directory tree and an in-memory SQLite database. Used
// by `ModuleConfig.Fake` and by policy fixture tests (script config
// fake_modules = true). Seeds and failures come from script config:
//
//	fake_ldap     = {{dn = "uid=alice,ou=people,dc=x", uid = "alice", userPassword = "pw"}, …}
//	fake_dns_keys = {"usher-key."}          -- keys the fake DNS server accepts
//	fake_fs_roots = {"/srv/usher"}           -- default {"/srv/usher"}
//	fake_down     = {"ldap", "dns", "fs"}   -- these fail as if unreachable
type fakeSet struct {
	ldap *fakeLDAP
	dns  *fakeDNS
	fs   *fakeFS
	db   *sqlDB

	mu     sync.Mutex
	seeded map[string]bool
}

var fakeSeq atomic.Int64

func newFakeSet() (*fakeSet, error) {
	db, err := sql.Open("sqlite", fmt.Sprintf("file:usher-fake-%d?mode=memory&cache=shared", fakeSeq.Add(1)))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	f := &fakeSet{
		ldap:   &fakeLDAP{entries: map[string]ldapEntry{}, binds: map[string]LDAPBind{}},
		dns:    &fakeDNS{records: map[string][]string{}, keys: map[string]bool{}},
		fs:     &fakeFS{nodes: map[string]fakeNode{}, roots: &fsRoots{}},
		db:     &sqlDB{db: db, driver: "sqlite"},
		seeded: map[string]bool{},
	}
	return f, nil
}

func (f *fakeSet) close() error { return f.db.close() }

// seed applies a script's fake_* config once per distinct config.
func (f *fakeSet) seed(cfg map[string]any) {
	if cfg == nil {
		return
	}
	key := fmt.Sprint(cfg["fake_ldap"], cfg["fake_dns_keys"], cfg["fake_fs_roots"], cfg["fake_down"])
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seeded[key] {
		return
	}
	f.seeded[key] = true
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
			f.ldap.put(dn, attrs)
		}
	}
	for _, k := range anyStrings(cfg["fake_dns_keys"]) {
		f.dns.mu.Lock()
		f.dns.keys[dns.Fqdn(k)] = true
		f.dns.mu.Unlock()
	}
	roots := anyStrings(cfg["fake_fs_roots"])
	if len(roots) == 0 {
		roots = []string{"/srv/usher"}
	}
	f.fs.mu.Lock()
	for _, r := range roots {
		found := false
		for _, have := range f.fs.roots.roots {
			found = found || have == r
		}
		if !found {
			f.fs.roots.roots = append(f.fs.roots.roots, r)
		}
	}
	f.fs.mu.Unlock()
	for _, d := range anyStrings(cfg["fake_down"]) {
		switch d {
		case "ldap":
			f.ldap.down.Store(true)
		case "dns":
			f.dns.down.Store(true)
		case "fs":
			f.fs.down.Store(true)
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

var errFakeDown = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused (fake server down)")}

// --- fake LDAP --------------------------------------------------------------

type fakeLDAP struct {
	mu      sync.Mutex
	entries map[string]ldapEntry // by normalised DN
	binds   map[string]LDAPBind
	down    atomic.Bool
}

func normDN(dn string) string {
	d, err := ldap.ParseDN(dn)
	if err != nil {
		return strings.ToLower(strings.ReplaceAll(dn, " ", ""))
	}
	var parts []string
	for _, r := range d.RDNs {
		var as []string
		for _, a := range r.Attributes {
			as = append(as, strings.ToLower(a.Type)+"="+strings.ToLower(a.Value))
		}
		sort.Strings(as)
		parts = append(parts, strings.Join(as, "+"))
	}
	return strings.Join(parts, ",")
}

func (l *fakeLDAP) put(dn string, attrs map[string][]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries[normDN(dn)] = ldapEntry{dn: dn, attrs: attrs}
}

// Entry returns a copy of an entry (tests).
func (l *fakeLDAP) Entry(dn string) (map[string][]string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[normDN(dn)]
	return e.attrs, ok
}

func (l *fakeLDAP) bindNamed(name string) (LDAPBind, bool) {
	return LDAPBind{DN: "cn=" + name + ",fake", Password: "fake"}, true
}

func ldapErr(code uint16, msg string) error {
	return &ldapError{code: code, err: fmt.Errorf("LDAP Result Code %d %q: %s", code, ldap.LDAPResultCodeMap[code], msg)}
}

func (l *fakeLDAP) bind(_ context.Context, _, dn, password string) error {
	if l.down.Load() {
		return &ldapError{err: errFakeDown}
	}
	if dn == "" || password == "" {
		return ldapErr(ldap.LDAPResultInvalidCredentials, "empty DN or password never binds")
	}
	l.mu.Lock()
	e, ok := l.entries[normDN(dn)]
	l.mu.Unlock()
	if !ok {
		return ldapErr(ldap.LDAPResultInvalidCredentials, "")
	}
	for _, pw := range getAttr(e.attrs, "userPassword") {
		if pw == password {
			return nil
		}
	}
	return ldapErr(ldap.LDAPResultInvalidCredentials, "")
}

func getAttr(m map[string][]string, name string) []string {
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}

func (l *fakeLDAP) search(_ context.Context, _ ldapEndpoint, s ldapSearch) ([]ldapEntry, error) {
	if l.down.Load() {
		return nil, &ldapError{err: errFakeDown}
	}
	pkt, err := ldap.CompileFilter(s.filter)
	if err != nil {
		return nil, ldapErr(ldap.LDAPResultFilterError, err.Error())
	}
	base := normDN(s.base)
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ldapEntry
	for k, e := range l.entries {
		var in bool
		switch s.scope {
		case ldap.ScopeBaseObject:
			in = k == base
		case ldap.ScopeSingleLevel:
			in = strings.HasSuffix(k, ","+base) && !strings.Contains(strings.TrimSuffix(k, ","+base), ",")
		default:
			in = k == base || strings.HasSuffix(k, ","+base) || base == ""
		}
		if in && fakeMatch(pkt, e.attrs) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dn < out[j].dn })
	return out, nil
}

// fakeMatch evaluates a compiled filter (and, or, not, equality, presence,
// substrings; case-insensitive).
func fakeMatch(p *ber.Packet, attrs map[string][]string) bool {
	switch p.Tag {
	case ldap.FilterAnd:
		for _, c := range p.Children {
			if !fakeMatch(c, attrs) {
				return false
			}
		}
		return true
	case ldap.FilterOr:
		for _, c := range p.Children {
			if fakeMatch(c, attrs) {
				return true
			}
		}
		return false
	case ldap.FilterNot:
		return len(p.Children) == 1 && !fakeMatch(p.Children[0], attrs)
	case ldap.FilterPresent:
		return len(getAttr(attrs, string(p.Data.Bytes()))) > 0 || strings.EqualFold(string(p.Data.Bytes()), "objectClass")
	case ldap.FilterEqualityMatch:
		name := p.Children[0].Value.(string)
		want := string(p.Children[1].Data.Bytes())
		for _, v := range getAttr(attrs, name) {
			if strings.EqualFold(v, want) {
				return true
			}
		}
		return false
	case ldap.FilterSubstrings:
		name := p.Children[0].Value.(string)
		for _, v := range getAttr(attrs, name) {
			s := strings.ToLower(v)
			ok := true
			for _, part := range p.Children[1].Children {
				sub := strings.ToLower(string(part.Data.Bytes()))
				switch part.Tag {
				case ldap.FilterSubstringsInitial:
					ok = ok && strings.HasPrefix(s, sub)
					s = strings.TrimPrefix(s, sub)
				case ldap.FilterSubstringsAny:
					i := strings.Index(s, sub)
					ok = ok && i >= 0
					if i >= 0 {
						s = s[i+len(sub):]
					}
				case ldap.FilterSubstringsFinal:
					ok = ok && strings.HasSuffix(s, sub)
				}
			}
			if ok {
				return true
			}
		}
		return false
	}
	return false
}

func (l *fakeLDAP) parentExists(dn string) bool {
	k := normDN(dn)
	i := strings.Index(k, ",")
	if i < 0 {
		return true
	}
	parent := k[i+1:]
	if _, ok := l.entries[parent]; ok {
		return true
	}
	// a suffix the fake was never told about counts as present when some
	// entry lives below it
	for e := range l.entries {
		if strings.HasSuffix(e, ","+parent) {
			return true
		}
	}
	return !strings.Contains(parent, ",") || len(l.entries) == 0
}

func (l *fakeLDAP) add(_ context.Context, _ ldapEndpoint, dn string, attrs map[string][]string) error {
	if l.down.Load() {
		return &ldapError{err: errFakeDown}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	if _, ok := l.entries[k]; ok {
		return ldapErr(ldap.LDAPResultEntryAlreadyExists, dn)
	}
	if !l.parentExists(dn) {
		return ldapErr(ldap.LDAPResultNoSuchObject, dn)
	}
	cp := map[string][]string{}
	for a, v := range attrs {
		cp[a] = append([]string(nil), v...)
	}
	l.entries[k] = ldapEntry{dn: dn, attrs: cp}
	return nil
}

func (l *fakeLDAP) modify(_ context.Context, _ ldapEndpoint, dn string, m ldapMods) error {
	if l.down.Load() {
		return &ldapError{err: errFakeDown}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	e, ok := l.entries[k]
	if !ok {
		return ldapErr(ldap.LDAPResultNoSuchObject, dn)
	}
	for a, vs := range m.add {
		for _, v := range vs {
			for _, have := range e.attrs[a] {
				if strings.EqualFold(have, v) {
					return ldapErr(ldap.LDAPResultAttributeOrValueExists, a+"="+v)
				}
			}
			e.attrs[a] = append(e.attrs[a], v)
		}
	}
	for a, vs := range m.replace {
		e.attrs[a] = append([]string(nil), vs...)
	}
	for a, vs := range m.del {
		if len(vs) == 0 {
			delete(e.attrs, a)
			continue
		}
		var keep []string
		for _, have := range e.attrs[a] {
			drop := false
			for _, v := range vs {
				drop = drop || strings.EqualFold(have, v)
			}
			if !drop {
				keep = append(keep, have)
			}
		}
		e.attrs[a] = keep
	}
	return nil
}

func (l *fakeLDAP) del(_ context.Context, _ ldapEndpoint, dn string) error {
	if l.down.Load() {
		return &ldapError{err: errFakeDown}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	if _, ok := l.entries[k]; !ok {
		return ldapErr(ldap.LDAPResultNoSuchObject, dn)
	}
	for e := range l.entries {
		if strings.HasSuffix(e, ","+k) {
			return ldapErr(ldap.LDAPResultNotAllowedOnNonLeaf, dn)
		}
	}
	delete(l.entries, k)
	return nil
}

// --- fake DNS ---------------------------------------------------------------

type fakeDNS struct {
	mu      sync.Mutex
	records map[string][]string // "name TYPE" → data
	keys    map[string]bool
	down    atomic.Bool
}

// Records returns the data of name/type (tests).
func (d *fakeDNS) Records(name, typ string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.records[dns.Fqdn(strings.ToLower(name))+" "+strings.ToUpper(typ)]...)
}

func (d *fakeDNS) update(_ context.Context, u dnsUpdate) error {
	if d.down.Load() {
		return &dnsError{rcode: -1, err: errFakeDown}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.keys[dns.Fqdn(u.key)] {
		return &dnsError{rcode: dns.RcodeNotAuth, err: fmt.Errorf("dns update of %s refused by %s: NOTAUTH (TSIG BADKEY)", u.zone, u.server)}
	}
	zone := dns.Fqdn(strings.ToLower(u.zone))
	for _, set := range [][]dnsRR{u.remove, u.add} {
		for _, r := range set {
			if _, err := buildRR(r, false); err != nil {
				return &dnsError{rcode: -1, err: err}
			}
			if n := dns.Fqdn(strings.ToLower(r.name)); n != zone && !strings.HasSuffix(n, "."+zone) {
				return &dnsError{rcode: dns.RcodeNotZone, err: fmt.Errorf("dns update: %s is not in zone %s: NOTZONE", r.name, u.zone)}
			}
		}
	}
	for _, r := range u.remove {
		k := dns.Fqdn(strings.ToLower(r.name)) + " " + strings.ToUpper(r.typ)
		if r.data == "" {
			delete(d.records, k)
			continue
		}
		var keep []string
		for _, v := range d.records[k] {
			if v != fakeData(r) {
				keep = append(keep, v)
			}
		}
		d.records[k] = keep
	}
	for _, r := range u.add {
		k := dns.Fqdn(strings.ToLower(r.name)) + " " + strings.ToUpper(r.typ)
		v := fakeData(r)
		dup := false
		for _, have := range d.records[k] {
			dup = dup || have == v
		}
		if !dup {
			d.records[k] = append(d.records[k], v)
		}
	}
	return nil
}

func fakeData(r dnsRR) string {
	switch strings.ToUpper(r.typ) {
	case "PTR", "CNAME":
		return dns.Fqdn(r.data)
	}
	return r.data
}

func (d *fakeDNS) lookup(_ context.Context, _, name, typ string) ([]string, error) {
	if d.down.Load() {
		return nil, &dnsError{rcode: -1, err: errFakeDown}
	}
	return d.Records(name, typ), nil
}

// --- fake fs ----------------------------------------------------------------

type fakeNode struct {
	dir      bool
	mode     fs.FileMode
	uid, gid int
	data     []byte
}

type fakeFS struct {
	mu    sync.Mutex
	nodes map[string]fakeNode
	roots *fsRoots
	down  atomic.Bool
}

// Node returns a node (tests).
func (f *fakeFS) Node(p string) (fakeNode, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[p]
	return n, ok
}

func (f *fakeFS) rootList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.roots.rootList()
}

func (f *fakeFS) resolve(p string) (string, []string, error) {
	if f.down.Load() {
		return "", nil, errors.New("fs: input/output error (fake)")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.roots.resolve(p)
}

func (f *fakeFS) mkdir(p string, a fsAttrs) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := root
	for _, c := range comps {
		cur += "/" + c
		n, ok := f.nodes[cur]
		if ok && !n.dir {
			return fmt.Errorf("fs: %s is not a directory", cur)
		}
		f.nodes[cur] = fakeNode{dir: true, mode: a.mode, uid: a.uid, gid: a.gid}
	}
	return nil
}

func (f *fakeFS) rmtree(p string) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return fmt.Errorf("fs: refusing to remove the root %s", root)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := root + "/" + strings.Join(comps, "/")
	for k := range f.nodes {
		if k == c || strings.HasPrefix(k, c+"/") {
			delete(f.nodes, k)
		}
	}
	return nil
}

func (f *fakeFS) stat(p string) (map[string]any, error) {
	root, comps, err := f.resolve(p)
	if err != nil {
		return nil, err
	}
	if len(comps) == 0 {
		return map[string]any{"type": "dir", "mode": "0755"}, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[root+"/"+strings.Join(comps, "/")]
	if !ok {
		return nil, nil
	}
	typ := "file"
	if n.dir {
		typ = "dir"
	}
	return map[string]any{"type": typ, "mode": fmt.Sprintf("%04o", fsPerm(n.mode)), "uid": n.uid, "gid": n.gid, "size": len(n.data)}, nil
}

func (f *fakeFS) write(p string, data []byte, a fsAttrs) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return errors.New("fs: cannot write a root")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(comps) > 1 {
		if n, ok := f.nodes[root+"/"+strings.Join(comps[:len(comps)-1], "/")]; !ok || !n.dir {
			return fmt.Errorf("fs: parent of %s does not exist", p)
		}
	}
	f.nodes[root+"/"+strings.Join(comps, "/")] = fakeNode{mode: a.mode, uid: a.uid, gid: a.gid, data: append([]byte(nil), data...)}
	return nil
}
