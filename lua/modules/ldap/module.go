package ldap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua"
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

// Name is the module's Lua global and configuration section.
const Name = "ldap"

// Open parses the [policy.modules.ldap] table and makes the module with
// the real client.
func Open(section map[string]any, timeout time.Duration) (lua.Module, error) {
	c, err := ParseConfig(section)
	if err != nil {
		return nil, err
	}
	cl, err := NewClient(c, timeout)
	if err != nil {
		return nil, err
	}
	return New(cl), nil
}

// New makes the module over b. Closing the module closes b when b is an
// io.Closer.
func New(b Backend) lua.Module { return &module{b: b} }

type module struct{ b Backend }

func (m *module) Name() string { return Name }

func (m *module) Close() error {
	if c, ok := m.b.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// filter formats f, replacing each %s by the next value escaped with
// goldap.EscapeFilter; %% is a percent sign. Any other verb is an error.
func filter(f string, vals []string) (string, error) {
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
			b.WriteString(goldap.EscapeFilter(vals[n]))
			n++
		default:
			return "", fmt.Errorf("ldap.filter: only %%s and %%%% are allowed, not %%%c", f[i])
		}
	}
	if n != len(vals) {
		return "", fmt.Errorf("ldap.filter: %d placeholders but %d values", n, len(vals))
	}
	if _, err := goldap.CompileFilter(b.String()); err != nil {
		return "", fmt.Errorf("ldap.filter: %v", err)
	}
	return b.String(), nil
}

// --- Lua glue ---------------------------------------------------------------

const connType = "usher.ldap.conn"

// state is the module in one Lua state.
type state struct {
	s *lua.ModuleState
	b Backend
}

func (m *module) Table(s *lua.ModuleState) *glua.LTable {
	st := &state{s: s, b: m.b}
	b := m.b
	L := s.L()
	mt := L.NewTypeMetatable(connType)
	methods := lua.FuncTable(L, map[string]glua.LGFunction{
		"search": st.search,
		"add":    st.add,
		"modify": st.modify,
		"delete": st.delete,
		"close":  func(L *glua.LState) int { return 0 },
	})
	mt.RawSetString("__index", methods)
	mt.RawSetString("__metatable", glua.LString("locked"))
	return lua.FuncTable(L, map[string]glua.LGFunction{
		"filter": func(L *glua.LState) int {
			f := L.CheckString(1)
			var vals []string
			for i := 2; i <= L.GetTop(); i++ {
				vals = append(vals, L.ToStringMeta(L.Get(i)).String())
			}
			s, err := filter(f, vals)
			if err != nil {
				L.RaiseError("%s", err.Error())
			}
			L.Push(glua.LString(s))
			return 1
		},
		"escape":    func(L *glua.LState) int { L.Push(glua.LString(goldap.EscapeFilter(L.CheckString(1)))); return 1 },
		"escape_dn": func(L *glua.LState) int { L.Push(glua.LString(goldap.EscapeDN(L.CheckString(1)))); return 1 },
		"bind": func(L *glua.LState) int {
			u, dn, pw := L.CheckString(1), L.CheckString(2), L.OptString(3, "")
			if pw == "" || dn == "" {
				L.Push(glua.LFalse)
				L.Push(glua.LString("empty DN or password"))
				return 2
			}
			err := s.Net(func(ctx context.Context) error { return b.Bind(ctx, u, dn, pw) })
			if err != nil {
				L.Push(glua.LFalse)
				L.Push(glua.LString(err.Error()))
				L.Push(glua.LNumber(code(err)))
				return 3
			}
			L.Push(glua.LTrue)
			return 1
		},
		"conn": func(L *glua.LState) int {
			t := L.CheckTable(1)
			ep := Endpoint{URL: lua.ToString(t.RawGetString("url"))}
			if ep.URL == "" {
				L.ArgError(1, "url required")
			}
			if name := lua.ToString(t.RawGetString("bind")); name != "" {
				bd, ok := b.NamedBind(name)
				if !ok {
					L.ArgError(1, fmt.Sprintf("no LDAP bind %q in policy.modules.ldap.binds", name))
				}
				ep.DN, ep.Password = bd.DN, bd.Password
			} else {
				ep.DN, ep.Password = lua.ToString(t.RawGetString("dn")), lua.ToString(t.RawGetString("password"))
				if ep.DN != "" && ep.Password == "" {
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

func code(err error) int {
	var le *Error
	if errors.As(err, &le) {
		return int(le.Code)
	}
	return 0
}

func checkConn(L *glua.LState) Endpoint {
	ud := L.CheckUserData(1)
	ep, ok := ud.Value.(*Endpoint)
	if !ok {
		L.ArgError(1, "ldap connection expected (use c:method(...))")
	}
	return *ep
}

func pushErr(L *glua.LState, err error) int {
	return lua.PushErr(L, err, glua.LNumber(code(err)))
}

func (st *state) search(L *glua.LState) int {
	ep := checkConn(L)
	t := L.CheckTable(2)
	s := Search{Base: lua.ToString(t.RawGetString("base")), Scope: goldap.ScopeWholeSubtree, Limit: 1000}
	switch lua.ToString(t.RawGetString("scope")) {
	case "", "sub":
	case "one":
		s.Scope = goldap.ScopeSingleLevel
	case "base":
		s.Scope = goldap.ScopeBaseObject
	default:
		L.ArgError(2, "scope must be sub, one or base")
	}
	if n, ok := lua.ToInt(t.RawGetString("limit")); ok && n > 0 && n < s.Limit {
		s.Limit = n
	}
	f := lua.ToString(t.RawGetString("filter"))
	if f == "" {
		f = "(objectClass=*)"
	}
	var vals []string
	if vt, ok := t.RawGetString("values").(*glua.LTable); ok {
		vals = lua.Strings(vt)
	}
	var err error
	if s.Filter, err = filter(f, vals); err != nil {
		L.ArgError(2, err.Error())
	}
	if at, ok := t.RawGetString("attrs").(*glua.LTable); ok {
		s.Attrs = lua.Strings(at)
	}
	var es []Entry
	err = st.s.Net(func(ctx context.Context) error {
		var err error
		es, err = st.b.Search(ctx, ep, s)
		return err
	})
	if err != nil {
		return pushErr(L, err)
	}
	out := L.CreateTable(len(es), 0)
	for i, e := range es {
		et := L.CreateTable(0, 2)
		et.RawSetString("dn", glua.LString(e.DN))
		at := L.CreateTable(0, len(e.Attrs))
		for k, v := range e.Attrs {
			at.RawSetString(k, lua.StringList(L, v))
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
		name := lua.ToString(k)
		if name == "" {
			L.ArgError(n, "attribute names must be strings")
		}
		switch x := v.(type) {
		case *glua.LTable:
			m[name] = lua.Strings(x)
		default:
			m[name] = []string{L.ToStringMeta(x).String()}
		}
	})
	return m
}

func (st *state) add(L *glua.LState) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	attrs := attrMap(L, 3, L.CheckTable(3))
	if err := st.s.Net(func(ctx context.Context) error { return st.b.Add(ctx, ep, dn, attrs) }); err != nil {
		return pushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

func (st *state) modify(L *glua.LState) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	t := L.CheckTable(3)
	sub := func(k string) map[string][]string {
		tt, _ := t.RawGetString(k).(*glua.LTable)
		return attrMap(L, 3, tt)
	}
	m := Mods{Add: sub("add"), Replace: sub("replace"), Delete: sub("delete")}
	if err := st.s.Net(func(ctx context.Context) error { return st.b.Modify(ctx, ep, dn, m) }); err != nil {
		return pushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

func (st *state) delete(L *glua.LState) int {
	ep := checkConn(L)
	dn := L.CheckString(2)
	if err := st.s.Net(func(ctx context.Context) error { return st.b.Delete(ctx, ep, dn) }); err != nil {
		return pushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}
