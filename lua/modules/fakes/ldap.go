package fakes

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	ber "github.com/go-asn1-ber/asn1-ber"
	goldap "github.com/go-ldap/ldap/v3"

	"github.com/usher-vm/usher/lua/modules/ldap"
)

// LDAP is an in-memory directory implementing ldap.Backend.
type LDAP struct {
	mu      sync.Mutex
	entries map[string]ldap.Entry // by normalised DN
	down    atomic.Bool
}

func normDN(dn string) string {
	d, err := goldap.ParseDN(dn)
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

// Put adds or replaces an entry.
func (l *LDAP) Put(dn string, attrs map[string][]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries[normDN(dn)] = ldap.Entry{DN: dn, Attrs: attrs}
}

// Entry returns a copy of an entry's attributes.
func (l *LDAP) Entry(dn string) (map[string][]string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[normDN(dn)]
	if !ok {
		return nil, false
	}
	cp := make(map[string][]string, len(e.Attrs))
	for k, v := range e.Attrs {
		cp[k] = append([]string(nil), v...)
	}
	return cp, true
}

// NamedBind accepts every name.
func (l *LDAP) NamedBind(name string) (ldap.Bind, bool) {
	return ldap.Bind{DN: "cn=" + name + ",fake", Password: "fake"}, true
}

func ldapErr(code uint16, msg string) error {
	return &ldap.Error{Code: code, Err: fmt.Errorf("LDAP Result Code %d %q: %s", code, goldap.LDAPResultCodeMap[code], msg)}
}

// Bind checks password against the entry's userPassword.
func (l *LDAP) Bind(_ context.Context, _, dn, password string) error {
	if l.down.Load() {
		return &ldap.Error{Err: errDown()}
	}
	if dn == "" || password == "" {
		return ldapErr(goldap.LDAPResultInvalidCredentials, "empty DN or password never binds")
	}
	l.mu.Lock()
	e, ok := l.entries[normDN(dn)]
	l.mu.Unlock()
	if !ok {
		return ldapErr(goldap.LDAPResultInvalidCredentials, "")
	}
	for _, pw := range getAttr(e.Attrs, "userPassword") {
		if pw == password {
			return nil
		}
	}
	return ldapErr(goldap.LDAPResultInvalidCredentials, "")
}

func getAttr(m map[string][]string, name string) []string {
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}

// Search evaluates the filter over the entries in scope.
func (l *LDAP) Search(_ context.Context, _ ldap.Endpoint, s ldap.Search) ([]ldap.Entry, error) {
	if l.down.Load() {
		return nil, &ldap.Error{Err: errDown()}
	}
	pkt, err := goldap.CompileFilter(s.Filter)
	if err != nil {
		return nil, ldapErr(goldap.LDAPResultFilterError, err.Error())
	}
	base := normDN(s.Base)
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ldap.Entry
	for k, e := range l.entries {
		var in bool
		switch s.Scope {
		case goldap.ScopeBaseObject:
			in = k == base
		case goldap.ScopeSingleLevel:
			in = strings.HasSuffix(k, ","+base) && !strings.Contains(strings.TrimSuffix(k, ","+base), ",")
		default:
			in = k == base || strings.HasSuffix(k, ","+base) || base == ""
		}
		if in && fakeMatch(pkt, e.Attrs) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DN < out[j].DN })
	return out, nil
}

// fakeMatch evaluates a compiled filter (and, or, not, equality, presence,
// substrings; case-insensitive).
func fakeMatch(p *ber.Packet, attrs map[string][]string) bool {
	switch p.Tag {
	case goldap.FilterAnd:
		for _, c := range p.Children {
			if !fakeMatch(c, attrs) {
				return false
			}
		}
		return true
	case goldap.FilterOr:
		for _, c := range p.Children {
			if fakeMatch(c, attrs) {
				return true
			}
		}
		return false
	case goldap.FilterNot:
		return len(p.Children) == 1 && !fakeMatch(p.Children[0], attrs)
	case goldap.FilterPresent:
		return len(getAttr(attrs, string(p.Data.Bytes()))) > 0 || strings.EqualFold(string(p.Data.Bytes()), "objectClass")
	case goldap.FilterEqualityMatch:
		name := p.Children[0].Value.(string)
		want := string(p.Children[1].Data.Bytes())
		for _, v := range getAttr(attrs, name) {
			if strings.EqualFold(v, want) {
				return true
			}
		}
		return false
	case goldap.FilterSubstrings:
		name := p.Children[0].Value.(string)
		for _, v := range getAttr(attrs, name) {
			s := strings.ToLower(v)
			ok := true
			for _, part := range p.Children[1].Children {
				sub := strings.ToLower(string(part.Data.Bytes()))
				switch part.Tag {
				case goldap.FilterSubstringsInitial:
					ok = ok && strings.HasPrefix(s, sub)
					s = strings.TrimPrefix(s, sub)
				case goldap.FilterSubstringsAny:
					i := strings.Index(s, sub)
					ok = ok && i >= 0
					if i >= 0 {
						s = s[i+len(sub):]
					}
				case goldap.FilterSubstringsFinal:
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

func (l *LDAP) parentExists(dn string) bool {
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

// Add adds an entry below an existing parent.
func (l *LDAP) Add(_ context.Context, _ ldap.Endpoint, dn string, attrs map[string][]string) error {
	if l.down.Load() {
		return &ldap.Error{Err: errDown()}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	if _, ok := l.entries[k]; ok {
		return ldapErr(goldap.LDAPResultEntryAlreadyExists, dn)
	}
	if !l.parentExists(dn) {
		return ldapErr(goldap.LDAPResultNoSuchObject, dn)
	}
	cp := map[string][]string{}
	for a, v := range attrs {
		cp[a] = append([]string(nil), v...)
	}
	l.entries[k] = ldap.Entry{DN: dn, Attrs: cp}
	return nil
}

// Modify changes an entry's attributes.
func (l *LDAP) Modify(_ context.Context, _ ldap.Endpoint, dn string, m ldap.Mods) error {
	if l.down.Load() {
		return &ldap.Error{Err: errDown()}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	e, ok := l.entries[k]
	if !ok {
		return ldapErr(goldap.LDAPResultNoSuchObject, dn)
	}
	for a, vs := range m.Add {
		for _, v := range vs {
			for _, have := range e.Attrs[a] {
				if strings.EqualFold(have, v) {
					return ldapErr(goldap.LDAPResultAttributeOrValueExists, a+"="+v)
				}
			}
			e.Attrs[a] = append(e.Attrs[a], v)
		}
	}
	for a, vs := range m.Replace {
		e.Attrs[a] = append([]string(nil), vs...)
	}
	for a, vs := range m.Delete {
		if len(vs) == 0 {
			delete(e.Attrs, a)
			continue
		}
		var keep []string
		for _, have := range e.Attrs[a] {
			drop := false
			for _, v := range vs {
				drop = drop || strings.EqualFold(have, v)
			}
			if !drop {
				keep = append(keep, have)
			}
		}
		e.Attrs[a] = keep
	}
	return nil
}

// Delete removes a leaf entry.
func (l *LDAP) Delete(_ context.Context, _ ldap.Endpoint, dn string) error {
	if l.down.Load() {
		return &ldap.Error{Err: errDown()}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := normDN(dn)
	if _, ok := l.entries[k]; !ok {
		return ldapErr(goldap.LDAPResultNoSuchObject, dn)
	}
	for e := range l.entries {
		if strings.HasSuffix(e, ","+k) {
			return ldapErr(goldap.LDAPResultNotAllowedOnNonLeaf, dn)
		}
	}
	delete(l.entries, k)
	return nil
}
