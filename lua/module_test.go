package lua

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	glua "github.com/yuin/gopher-lua"
)

// probeModule is a module for the engine's tests: echo.wait(ms) waits
// through Net, echo.script() names the script, echo.cfg(k) reads its
// config.
type probeModule struct {
	name   string
	closed int
	tables int
}

func (m *probeModule) Name() string { return m.name }
func (m *probeModule) Close() error { m.closed++; return nil }

func (m *probeModule) Table(s *ModuleState) *glua.LTable {
	m.tables++
	return FuncTable(s.L(), map[string]glua.LGFunction{
		"wait": func(L *glua.LState) int {
			d := time.Duration(L.CheckInt(1)) * time.Millisecond
			err := s.Net(func(ctx context.Context) error {
				select {
				case <-time.After(d):
					return nil
				case <-ctx.Done():
					return errors.New("gave up")
				}
			})
			if err != nil {
				return PushErr(L, err)
			}
			L.Push(glua.LTrue)
			return 1
		},
		"script": func(L *glua.LState) int { L.Push(glua.LString(s.Script())); return 1 },
		"cfg":    func(L *glua.LState) int { L.Push(ToLua(L, s.Config()[L.CheckString(1)])); return 1 },
	})
}

func TestModulesInstalledReadOnlyAndClosed(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "p.lua", `
usher.every("1h", function()
  assert(echo.script() == "p.lua" and echo.cfg("k") == "v")
  assert(not pcall(function() echo.wait = nil end), "echo must be read-only")
  local ok, err = echo.wait(1000)
  assert(ok == nil and err == "gave up (context deadline exceeded)", tostring(err))
end)`)
	m := &probeModule{name: "echo"}
	h := newHost(t, Options{Dirs: []string{dir}, Modules: []Module{m}, ModuleTimeout: 20 * time.Millisecond, PoolSize: 1,
		Config: map[string]map[string]any{"p": {"k": "v"}}})
	if err := h.RunTimers(context.Background(), "p"); err != nil {
		t.Fatal(err)
	}
	if m.tables != 1 {
		t.Errorf("Table called %d times for one state", m.tables)
	}
	h.Close()
	if m.closed != 1 {
		t.Errorf("closed %d times", m.closed)
	}
}

func TestModulesRefused(t *testing.T) {
	for _, c := range []struct {
		names []string
		want  string
	}{
		{[]string{"echo", "echo"}, "given twice"},
		{[]string{"string"}, "would shadow"},
		{[]string{"usher"}, "would shadow"},
		{[]string{"Echo"}, "lower-case identifier"},
	} {
		var mods []Module
		var probes []*probeModule
		for _, n := range c.names {
			p := &probeModule{name: n}
			mods, probes = append(mods, p), append(probes, p)
		}
		_, err := New(Options{Modules: mods, Logger: quietLogger()})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.names, err, c.want)
		}
		for _, p := range probes {
			if p.closed != 1 {
				t.Errorf("%v: a module New refused was closed %d times", c.names, p.closed)
			}
		}
	}
}
