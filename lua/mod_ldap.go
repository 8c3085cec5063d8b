package lua

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
	glua "github.com/yuin/gopher-lua"
)

// The ldap module. Lua API (docs/lua-api.md, "Site modules"):
//
//	ldap.filter("(&(uid=%s)(objectClass=%s))", user, cls) → escaped filter
//	ldap.escape(v), ldap.escape_dn(v)
//	ldap.bind(url, dn, password) → true | false, err   (fresh connection)
//	local c = ldap.conn{url = …, bind = "admin"}   -- or dn =, password =
//	c:search{base =, scope = "sub"|"one"|"base", filter = "(uid=%s)",
//	         values = {user}, attrs = {…}, limit = n} → {{dn =, attrs = {a = {…}}}} | nil, err, code
//	c:add(dn, {objectClass = {…}, ou = "x"}) → true | nil, err, code
//	c:modify(dn, {add = {…}, replace = {…}, delete = {…}}) → true | nil, err, code
//	c:delete(dn) → true | nil, err, code

// ldapEndpoint is where and as whom.
type ldapEndpoint struct {
	url, dn, password string
}

type ldapSearch struct {
	base   string
	scope  int
	filter string
	attrs  []string
	limit  int
}

type ldapEntry struct {
	dn    string
	attrs map[string][]string
}

type ldapMods struct {
	add, replace, del map[string][]string
}

// ldapError carries the LDAP result code (0 for network errors).
type ldapError struct {
	code uint16
	err  error
}

func (e *ldapError) Error() string { return e.err.Error() }

type ldapBackend interface {
	bind(ctx context.Context, url, dn, password string) error
	search(ctx context.Context, ep ldapEndpoint, s ldapSearch) ([]ldapEntry, error)
	add(ctx context.Context, ep ldapEndpoint, dn string, attrs map[string][]string) error
	modify(ctx context.Context, ep ldapEndpoint, dn string, m ldapMods) error
	del(ctx context.Context, ep ldapEndpoint, dn string) error
	bindNamed(name string) (LDAPBind, bool)
}

// ldapClient is the real backend: go-ldap with a small pool of bound
// connections per URL and bind DN.
type ldapClient struct {
	cfg     LDAPModuleConfig
	timeout time.Duration
	tls     *tls.Config
	allowed map[string]*url.URL

	mu   sync.Mutex
	idle map[string][]*ldap.Conn
}

func newLDAPClient(c LDAPModuleConfig, timeout time.Duration) (*ldapClient, error) {
	lc := &ldapClient{cfg: c, timeout: timeout, allowed: map[string]*url.URL{}, idle: map[string][]*ldap.Conn{}}
	if lc.cfg.PoolSize <= 0 {
		lc.cfg.PoolSize = 4
	}
	lc.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ldap ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ldap ca_file %s: no certificate", c.CAFile)
		}
		lc.tls.RootCAs = pool
	}
	for _, s := range c.Servers {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
			return nil, fmt.Errorf("ldap server %q: want ldap://host[:port] or ldaps://host[:port]", s)
		}
		lc.allowed[normURL(u)] = u
	}
	return lc, nil
}

func normURL(u *url.URL) string {
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(host), port)
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (c *ldapClient) bindNamed(name string) (LDAPBind, bool) {
	b, ok := c.cfg.Binds[name]
	return b, ok
}

// dial opens a TLS (ldaps or StartTLS) connection to an allowed server.
func (c *ldapClient) dial(ctx context.Context, raw string) (*ldap.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("ldap: bad url %q", raw)
	}
	allowed, ok := c.allowed[normURL(u)]
	if !ok {
		return nil, fmt.Errorf("ldap: server %s is not in policy.modules.ldap.servers", raw)
	}
	d := &net.Dialer{Timeout: c.timeout}
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	tc := c.tls.Clone()
	tc.ServerName = allowed.Hostname()
	addr := strings.TrimPrefix(strings.TrimPrefix(normURL(allowed), "ldaps://"), "ldap://")
	var conn *ldap.Conn
	if allowed.Scheme == "ldaps" {
		conn, err = ldap.DialURL("ldaps://"+addr, ldap.DialWithDialer(d), ldap.DialWithTLSConfig(tc))
	} else {
		conn, err = ldap.DialURL("ldap://"+addr, ldap.DialWithDialer(d))
		if err == nil && !(c.cfg.PlainLoopback && isLoopbackHost(allowed.Hostname())) {
			if err = conn.StartTLS(tc); err != nil {
				conn.Close()
				err = fmt.Errorf("ldap StartTLS with %s: %w", raw, err)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	conn.SetTimeout(c.timeout)
	return conn, nil
}

// do runs f on a pooled connection bound as ep, retrying once on a fresh
// connection when a pooled one turns out to be dead.
func (c *ldapClient) do(ctx context.Context, ep ldapEndpoint, f func(*ldap.Conn) error) error {
	key := ep.url + "\x00" + ep.dn
	for attempt := 0; attempt < 2; attempt++ {
		conn, pooled := c.take(key)
		if conn == nil {
			var err error
			if conn, err = c.dial(ctx, ep.url); err != nil {
				return &ldapError{err: err}
			}
			if ep.dn != "" {
				if err := conn.Bind(ep.dn, ep.password); err != nil {
					conn.Close()
					return wrapLDAP(err)
				}
			}
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		err := f(conn)
		cancelled := !stop()
		if cancelled {
			return &ldapError{err: fmt.Errorf("ldap: %w", ctx.Err())}
		}
		if err != nil && pooled && isNetErr(err) {
			conn.Close()
			continue // stale pooled connection: once more on a fresh one
		}
		if err != nil && isNetErr(err) {
			conn.Close()
		} else {
			c.put(key, conn)
		}
		return wrapLDAP(err)
	}
	return &ldapError{err: errors.New("ldap: connection lost")}
}

func isNetErr(err error) bool {
	var le *ldap.Error
	if errors.As(err, &le) {
		return le.ResultCode == ldap.ErrorNetwork
	}
	return true
}

func wrapLDAP(err error) error {
	if err == nil {
		return nil
	}
	var le *ldap.Error
	if errors.As(err, &le) {
		return &ldapError{code: le.ResultCode, err: err}
	}
	return &ldapError{err: err}
}

func (c *ldapClient) take(key string) (*ldap.Conn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		l := c.idle[key]
		if len(l) == 0 {
			return nil, false
		}
		conn := l[len(l)-1]
		c.idle[key] = l[:len(l)-1]
		if !conn.IsClosing() {
			return conn, true
		}
	}
}

func (c *ldapClient) put(key string, conn *ldap.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle[key]) >= c.cfg.PoolSize || conn.IsClosing() {
		conn.Close()
		return
	}
	c.idle[key] = append(c.idle[key], conn)
}

func (c *ldapClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.idle {
		for _, conn := range l {
			conn.Close()
		}
		delete(c.idle, k)
	}
}

// bind checks a user's password on a fresh connection that is closed
// afterwards (never pooled: its identity is the user's).
func (c *ldapClient) bind(ctx context.Context, raw, dn, password string) error {
	if password == "" || dn == "" {
		return &ldapError{code: ldap.LDAPResultInvalidCredentials, err: errors.New("ldap: empty DN or password never binds")}
	}
	conn, err := c.dial(ctx, raw)
	if err != nil {
		return &ldapError{err: err}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	return wrapLDAP(conn.Bind(dn, password))
}

func (c *ldapClient) search(ctx context.Context, ep ldapEndpoint, s ldapSearch) ([]ldapEntry, error) {
	var out []ldapEntry
	err := c.do(ctx, ep, func(conn *ldap.Conn) error {
		tl := int(c.timeout / time.Second)
		res, err := conn.Search(ldap.NewSearchRequest(s.base, s.scope, ldap.NeverDerefAliases, s.limit, tl, false, s.filter, s.attrs, nil))
		if err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
				return nil
			}
			return err
		}
		for _, e := range res.Entries {
			le := ldapEntry{dn: e.DN, attrs: map[string][]string{}}
			for _, a := range e.Attributes {
				le.attrs[a.Name] = a.Values
			}
			out = append(out, le)
		}
		return nil
	})
	return out, err
}

func (c *ldapClient) add(ctx context.Context, ep ldapEndpoint, dn string, attrs map[string][]string) error {
	return c.do(ctx, ep, func(conn *ldap.Conn) error {
		r := ldap.NewAddRequest(dn, nil)
		for _, k := range sortedAttrKeys(attrs) {
			r.Attribute(k, attrs[k])
		}
		return conn.Add(r)
	})
}

func (c *ldapClient) modify(ctx context.Context, ep ldapEndpoint, dn string, m ldapMods) error {
	return c.do(ctx, ep, func(conn *ldap.Conn) error {
		r := ldap.NewModifyRequest(dn, nil)
		for _, k := range sortedAttrKeys(m.add) {
			r.Add(k, m.add[k])
		}
		for _, k := range sortedAttrKeys(m.replace) {
			r.Replace(k, m.replace[k])
		}
		for _, k := range sortedAttrKeys(m.del) {
			r.Delete(k, m.del[k])
		}
		return conn.Modify(r)
	})
}

func (c *ldapClient) del(ctx context.Context, ep ldapEndpoint, dn string) error {
	return c.do(ctx, ep, func(conn *ldap.Conn) error { return conn.Del(ldap.NewDelRequest(dn, nil)) })
}

func sortedAttrKeys(m map[string][]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ldapFilter formats f, replacing each %s by the next value escaped with
// ldap.EscapeFilter; %% is a percent sign. Any other verb is an error.
func ldapFilter(f string, vals []string) (string, error) {
	var b strings.Builder
	n := 0
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			b.WriteByte(f[i])
			continue
		}
		if i+1 >= len(f) {
			return "", errors.New("ldap.filter: trailing %")
		}
		i++
		switch f[i] {
		case '%':
			b.WriteByte('%')
		case 's':
			if n >= len(vals) {
				return "", fmt.Errorf("ldap.filter: %d placeholders but %d values", n+1, len(vals))
			}
			b.WriteString(ldap.EscapeFilter(vals[n]))
			n++
		default:
			return "", fmt.Errorf("ldap.filter: only %%s and %%%% are allowed, not %%%c", f[i])
		}
	}
	if n != len(vals) {
		return "", fmt.Errorf("ldap.filter: %d placeholders but %d values", n, len(vals))
	}
	if _, err := ldap.CompileFilter(b.String()); err != nil {
		return "", fmt.Errorf("ldap.filter: %v", err)
	}
	return b.String(), nil
}

// --- Lua glue ---------------------------------------------------------------

const ldapConnType = "usher.ldap.conn"

func (ls *lstate) ldapModule(b ldapBackend) *glua.LTable {
	L := ls.L
	mt := L.NewTypeMetatable(ldapConnType)
	methods := modTable(L, map[string]glua.LGFunction{
		"search": func(L *glua.LState) int { return ls.ldapSearch(L, b) },
		"add":    func(L *glua.LState) int { return ls.ldapAdd(L, b) },
		"modify": func(L *glua.LState) int { return ls.ldapModify(L, b) },
		"delete": func(L *glua.LState) int { return ls.ldapDelete(L, b) },
		"close":  func(L *glua.LState) int { return 0 },
	})
	mt.RawSetString("__index", methods)
	mt.RawSetString("__metatable", glua.LString("locked"))
	return modTable(L, map[string]glua.LGFunction{
		"filter": func(L *glua.LState) int {
			f := L.CheckString(1)
			var vals []string
			for i := 2; i <= L.GetTop(); i++ {
				vals = append(vals, L.ToStringMeta(L.Get(i)).String())
			}
			s, err := ldapFilter(f, vals)
			if err != nil {
				L.RaiseError("%s", err.Error())
			}
			L.Push(glua.LString(s))
			return 1
		},
		"escape":    func(L *glua.LState) int { L.Push(glua.LString(ldap.EscapeFilter(L.CheckString(1)))); return 1 },
		"escape_dn": func(L *glua.LState) int { L.Push(glua.LString(ldap.EscapeDN(L.CheckString(1)))); return 1 },
		"bind": func(L *glua.LState) int {
			u, dn, pw := L.CheckString(1), L.CheckString(2), L.OptString(3, "")
			if pw == "" || dn == "" {
				L.Push(glua.LFalse)
				L.Push(glua.LString("empty DN or password"))
				return 2
			}
			err := ls.netCall(func(ctx context.Context) error { return b.bind(ctx, u, dn, pw) })
			if err != nil {
				L.Push(glua.LFalse)
				L.Push(glua.LString(err.Error()))
				L.Push(glua.LNumber(ldapCode(err)))
				return 3
			}
			L.Push(glua.LTrue)
			return 1
		},
		"conn": func(L *glua.LState) int {
			t := L.CheckTable(1)
			ep := ldapEndpoint{url: luaString(t.RawGetString("url"))}
			if ep.url == "" {
				L.ArgError(1, "url required")
			}
			if name := luaString(t.RawGetString("bind")); name != "" {
				bd, ok := b.bindNamed(name)
				if !ok {
					L.ArgError(1, fmt.Sprintf("no LDAP bind %q in policy.modules.ldap.binds", name))
				}
				ep.dn, ep.password = bd.DN, bd.Password
			} else {
				ep.dn, ep.password = luaString(t.RawGetString("dn")), luaString(t.RawGetString("password"))
				if ep.dn != "" && ep.password == "" {
					L.ArgError(1, "a dn needs a password (an empty password is an unauthenticated bind)")
				}
			}
			ud := L.NewUserData()
			ud.Value = &ep
			ud.Metatable = mt
			L.Push(ud)
			return 1
		},
	})
}

func ldapCode(err error) int {
	var le *ldapError
	if errors.As(err, &le) {
		return int(le.code)
	}
	return 0
}

func checkConn(L *glua.LState) ldapEndpoint {
	ud := L.CheckUserData(1)
	ep, ok := ud.Value.(*ldapEndpoint)
	if !ok {
		L.ArgError(1, "ldap connection expected (use c:method(...))")
	}
	return *ep
}

func ldapPushErr(L *glua.LState, err error) int {
	return pushErr(L, err, glua.LNumber(ldapCode(err)))
}

func (ls *lstate) ldapSearch(L *glua.LState, b ldapBackend) int {
	ep := checkConn(L)
	t := L.CheckTable(2)
	s := ldapSearch{base: luaString(t.RawGetString("base")), scope: ldap.ScopeWholeSubtree, limit: 1000}
	switch luaString(t.RawGetString("scope")) {
	case "", "sub":
	case "one":
		s.scope = ldap.ScopeSingleLevel
	case "base":
		s.scope = ldap.ScopeBaseObject
	default:
		L.ArgError(2, "scope must be sub, one or base")
	}
	if n, ok := luaInt(t.RawGetString("limit")); ok && n > 0 && n < s.limit {
		s.limit = n
	}
	f := luaString(t.RawGetString("filter"))
	if f == "" {
		f = "(objectClass=*)"
	}
	var vals []string
	if vt, ok := t.RawGetString("values").(*glua.LTable); ok {
		vals = luaStrings(vt)
	}
	var err error
	if s.filter, err = ldapFilter(f, vals); err != nil {
		L.ArgError(2, err.Error())
	}
	if at, ok := t.RawGetString("attrs").(*glua.LTable); ok {
		s.attrs = luaStrings(at)
	}
	var es []ldapEntry
	err = ls.netCall(func(ctx context.Context) error {
		var err error
		es, err = b.search(ctx, ep, s)
		return err
	})
	if err != nil {
		return ldapPushErr(L, err)
	}
	out := L.CreateTable(len(es), 0)
	for i, e := range es {
		et := L.CreateTable(0, 2)
		et.RawSetString("dn", glua.LString(e.dn))
		at := L.CreateTable(0, len(e.attrs))
		for k, v := range e.attrs {
			at.RawSetString(k, strList(L, v))
		}
		et.RawSetString("attrs", at)
		out.RawSetInt(i+1, et)
	}
	L.Push(out)
	return 1
}

// attrMap reads {name = "v" | {"v1", "v2"}}.
func attrMap(L *glua.LState, n int, t *glua.LTable) map[string][]string {
	m := map[string][]string{}
	if t == nil {
		return m
	}
	t.ForEach(func(k, v glua.LValue) {
		name := luaString(k)
		if name == "" {
			L.ArgError(n, "attribute names must be strings")
		}
		switch x := v.(type) {
		case *glua.LTable:
			m[name] = luaStrings(x)
		default:
			m[name] = []string{L.ToStringMeta(x).String()}
		}
	})
	return m
}

func (ls *lstate) ldapAdd(L *glua.LState, b ldapBackend) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	attrs := attrMap(L, 3, L.CheckTable(3))
	if err := ls.netCall(func(ctx context.Context) error { return b.add(ctx, ep, dn, attrs) }); err != nil {
		return ldapPushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

func (ls *lstate) ldapModify(L *glua.LState, b ldapBackend) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	t := L.CheckTable(3)
	sub := func(k string) map[string][]string {
		st, _ := t.RawGetString(k).(*glua.LTable)
		return attrMap(L, 3, st)
	}
	m := ldapMods{add: sub("add"), replace: sub("replace"), del: sub("delete")}
	if err := ls.netCall(func(ctx context.Context) error { return b.modify(ctx, ep, dn, m) }); err != nil {
		return ldapPushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

func (ls *lstate) ldapDelete(L *glua.LState, b ldapBackend) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	if err := ls.netCall(func(ctx context.Context) error { return b.del(ctx, ep, dn) }); err != nil {
		return ldapPushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}
