package fs

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os/user"
	"strconv"
	"time"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua"
)

// The fs module. Lua API:
//
//	fs.mkdir(path, {mode = "0755", owner = "alice" | 1000, group = "staff" | 100})
//	  → true | nil, err      creates path and missing parents (parents get the same owner and mode)
//	fs.rmtree(path) → true | nil, err     (a missing path is fine; never a root itself)
//	fs.stat(path) → {type = "dir"|"file"|"symlink"|"other", mode = "0755", uid =, gid =} | nil
//	fs.write(path, content, {mode =, owner =, group =}) → true | nil, err   (small files, e.g. init scripts)
//	fs.roots → {"/srv/usher", …}
//
// Paths are absolute and must lie below a configured root. Every operation
// goes through os.Root (no escape through "..", absolute symlinks or
// symlinked components) and additionally refuses any symlink on the way.

// Name is the module's Lua global and configuration section.
const Name = "fs"

// Open parses the [policy.modules.fs] table and makes the module over
// its roots.
func Open(section map[string]any, _ time.Duration) (lua.Module, error) {
	c, err := ParseConfig(section)
	if err != nil {
		return nil, err
	}
	r, err := NewRoots(c.Roots)
	if err != nil {
		return nil, err
	}
	return New(r), nil
}

// New makes the module over b.
func New(b Backend) lua.Module { return &module{b: b} }

type module struct{ b Backend }

func (m *module) Name() string { return Name }
func (m *module) Close() error { return nil }

func parseMode(v glua.LValue, def iofs.FileMode) (iofs.FileMode, error) {
	switch x := v.(type) {
	case *glua.LNilType:
		return def, nil
	case glua.LNumber:
		if x < 0 || x > 0o7777 {
			return 0, fmt.Errorf("mode %v out of range", x)
		}
		return iofs.FileMode(x), nil
	case glua.LString:
		n, err := strconv.ParseUint(string(x), 8, 32)
		if err != nil || n > 0o7777 {
			return 0, fmt.Errorf("mode %q: want an octal string like \"0755\"", string(x))
		}
		return iofs.FileMode(n), nil
	}
	return 0, fmt.Errorf("mode must be an octal string or a number")
}

// toFileMode turns permission bits with setuid/setgid/sticky into os bits.
func toFileMode(m iofs.FileMode) iofs.FileMode {
	out := m & 0o777
	if m&0o4000 != 0 {
		out |= iofs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= iofs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= iofs.ModeSticky
	}
	return out
}

func lookupID(v glua.LValue, group bool) (int, error) {
	switch x := v.(type) {
	case *glua.LNilType:
		return -1, nil
	case glua.LNumber:
		return int(x), nil
	case glua.LString:
		s := string(x)
		if n, err := strconv.Atoi(s); err == nil {
			return n, nil
		}
		if group {
			g, err := user.LookupGroup(s)
			if err != nil {
				return 0, err
			}
			return strconv.Atoi(g.Gid)
		}
		u, err := user.Lookup(s)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(u.Uid)
	}
	return 0, errors.New("owner/group must be a name or a number")
}

func readAttrs(L *glua.LState, n int, def iofs.FileMode) Attrs {
	a := Attrs{Mode: def, UID: -1, GID: -1}
	t := L.OptTable(n, nil)
	if t == nil {
		return a
	}
	m, err := parseMode(t.RawGetString("mode"), def)
	if err != nil {
		L.ArgError(n, err.Error())
	}
	a.Mode = toFileMode(m)
	if a.UID, err = lookupID(t.RawGetString("owner"), false); err != nil {
		L.ArgError(n, "owner: "+err.Error())
	}
	if a.GID, err = lookupID(t.RawGetString("group"), true); err != nil {
		L.ArgError(n, "group: "+err.Error())
	}
	return a
}

// maxWrite bounds fs.write.
const maxWrite = 1 << 20

func (m *module) Table(s *lua.ModuleState) *glua.LTable {
	b := m.b
	L := s.L()
	var err error
	run := func(L *glua.LState, f func() error) int {
		s.Pause(func() { err = f() })
		if err != nil {
			return lua.PushErr(L, err)
		}
		L.Push(glua.LTrue)
		return 1
	}
	t := lua.FuncTable(L, map[string]glua.LGFunction{
		"mkdir": func(L *glua.LState) int {
			p := L.CheckString(1)
			a := readAttrs(L, 2, 0o755)
			return run(L, func() error { return b.Mkdir(p, a) })
		},
		"rmtree": func(L *glua.LState) int {
			p := L.CheckString(1)
			return run(L, func() error { return b.RemoveAll(p) })
		},
		"write": func(L *glua.LState) int {
			p := L.CheckString(1)
			data := L.CheckString(2)
			if len(data) > maxWrite {
				L.ArgError(2, "fs.write: content over 1 MB")
			}
			a := readAttrs(L, 3, 0o644)
			return run(L, func() error { return b.Write(p, []byte(data), a) })
		},
		"stat": func(L *glua.LState) int {
			p := L.CheckString(1)
			var m map[string]any
			s.Pause(func() { m, err = b.Stat(p) })
			if err != nil {
				return lua.PushErr(L, err)
			}
			if m == nil {
				L.Push(glua.LNil)
				return 1
			}
			L.Push(lua.ToLua(L, m))
			return 1
		},
	})
	t.RawSetString("roots", lua.StringList(L, b.Roots()))
	return t
}
