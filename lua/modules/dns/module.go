package dns

import (
	"context"
	"errors"
	"io"
	"time"

	mdns "github.com/miekg/dns"
	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua"
)

// The dns module. Lua API:
//
//	dns.update{server = "ns1:53", zone = "usher.example.", key = "usher-key.",
//	           add = {{name =, type = "A", data = "10.0.0.5", ttl = 300}},
//	           remove = {{name =, type = "A", data = "10.0.0.5"}}}   -- no data: the whole RRset
//	  → true | nil, err, rcode        (RFC 2136 update signed with TSIG)
//	dns.lookup{server =, name =, type = "A"} → {"10.0.0.5", …} | nil, err
//	dns.ptr_name("10.0.0.5") → "5.0.0.10.in-addr.arpa."
//	dns.fqdn("a.b") → "a.b."

// Name is the module's Lua global and configuration section.
const Name = "dns"

// Open parses the [policy.modules.dns] table and makes the module with
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

func readRRs(L *glua.LState, t *glua.LTable, key string) []RR {
	lt, ok := t.RawGetString(key).(*glua.LTable)
	if !ok {
		return nil
	}
	var out []RR
	for i := 1; i <= lt.Len(); i++ {
		e, ok := lt.RawGetInt(i).(*glua.LTable)
		if !ok {
			L.ArgError(1, key+" must list {name=, type=, data=} tables")
		}
		r := RR{Name: lua.ToString(e.RawGetString("name")), Type: lua.ToString(e.RawGetString("type")), Data: lua.ToString(e.RawGetString("data"))}
		if r.Type == "" {
			r.Type = "A"
		}
		if n, ok := lua.ToInt(e.RawGetString("ttl")); ok && n > 0 {
			r.TTL = uint32(n)
		}
		out = append(out, r)
	}
	return out
}

func (m *module) Table(s *lua.ModuleState) *glua.LTable {
	b := m.b
	return lua.FuncTable(s.L(), map[string]glua.LGFunction{
		"update": func(L *glua.LState) int {
			t := L.CheckTable(1)
			u := Update{Server: lua.ToString(t.RawGetString("server")), Zone: lua.ToString(t.RawGetString("zone")),
				Key: lua.ToString(t.RawGetString("key")), Add: readRRs(L, t, "add"), Remove: readRRs(L, t, "remove")}
			if u.Server == "" || u.Zone == "" || u.Key == "" {
				L.ArgError(1, "server, zone and key are required")
			}
			if err := s.Net(func(ctx context.Context) error { return b.Update(ctx, u) }); err != nil {
				rc := -1
				var de *Error
				if errors.As(err, &de) {
					rc = de.Rcode
				}
				return lua.PushErr(L, err, glua.LNumber(rc))
			}
			L.Push(glua.LTrue)
			return 1
		},
		"lookup": func(L *glua.LState) int {
			t := L.CheckTable(1)
			server, name, typ := lua.ToString(t.RawGetString("server")), lua.ToString(t.RawGetString("name")), lua.ToString(t.RawGetString("type"))
			if typ == "" {
				typ = "A"
			}
			var out []string
			err := s.Net(func(ctx context.Context) error {
				var err error
				out, err = b.Lookup(ctx, server, name, typ)
				return err
			})
			if err != nil {
				return lua.PushErr(L, err)
			}
			L.Push(lua.StringList(L, out))
			return 1
		},
		"ptr_name": func(L *glua.LState) int {
			r, err := mdns.ReverseAddr(L.CheckString(1))
			if err != nil {
				return lua.PushErr(L, err)
			}
			L.Push(glua.LString(r))
			return 1
		},
		"fqdn": func(L *glua.LState) int { L.Push(glua.LString(mdns.Fqdn(L.CheckString(1)))); return 1 },
	})
}
