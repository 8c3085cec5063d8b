package lua

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"

	glua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// Limits of every Lua state.
const (
	callStackSize   = 200       // Lua frames: deep recursion errors with "stack overflow"
	registrySize    = 1024 * 4  // value stack slots at start
	registryMaxSize = 1024 * 64 // value stack slots at most (≈1 MB)
)

// compile parses and compiles a script once; every state of the script
// instantiates the same FunctionProto. file names the chunk in errors.
func compile(src []byte, file string) (*glua.FunctionProto, error) {
	chunk, err := parse.Parse(bytes.NewReader(src), file)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			if pe.Pos.Line <= 0 {
				return nil, fmt.Errorf("%s:%d: %s at end of file", file, countLines(src), strings.TrimSpace(pe.Message))
			}
			return nil, fmt.Errorf("%s:%d: %s near '%s'", file, pe.Pos.Line, strings.TrimSpace(pe.Message), pe.Token)
		}
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	proto, err := glua.Compile(chunk, file)
	if err != nil {
		var ce *glua.CompileError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("%s:%d: %s", file, ce.Line, ce.Message)
		}
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	return proto, nil
}

func countLines(b []byte) int { return bytes.Count(b, []byte("\n")) + 1 }

// removedGlobals are taken out of every state.
var removedGlobals = []string{
	"dofile", "loadfile", "load", "loadstring", "require", "module", "collectgarbage",
	"getfenv", "setfenv", "_printregs", "newproxy", "os", "io", "debug", "package",
	"channel", "coroutine", "_GOPHER_LUA_VERSION",
}

// newSandbox returns a state with only base, table, string and math opened,
// dangerous functions removed and the size-producing string functions
// replaced by metered ones. ls.call is consulted for metering.
func newSandbox(ls *lstate, logger *slog.Logger, script string) *glua.LState {
	L := glua.NewState(glua.Options{
		SkipOpenLibs:     true,
		CallStackSize:    callStackSize,
		RegistrySize:     registrySize,
		RegistryMaxSize:  registryMaxSize,
		RegistryGrowStep: 1024,
	})
	for _, lib := range []struct {
		name string
		fn   glua.LGFunction
	}{{glua.BaseLibName, glua.OpenBase}, {glua.TabLibName, glua.OpenTable}, {glua.StringLibName, glua.OpenString}, {glua.MathLibName, glua.OpenMath}} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(glua.LString(lib.name))
		L.Call(1, 0)
	}
	// The .. operator is charged before it joins: one instruction cannot
	// allocate past the memory limit (the patched gopher-lua's hook).
	L.ConcatHook = func(L *glua.LState, n int) { ls.call.charge(L, int64(n)) }
	g := L.G.Global
	for _, n := range removedGlobals {
		g.RawSetString(n, glua.LNil)
	}
	L.SetGlobal("require", L.NewFunction(ls.apiRequire)) // sandboxed: lib/<name>.lua only (require.go)
	// pairs and ipairs see through read-only proxies (req.vms, vm.data in
	// events where they cannot change): pairs honours __pairs, ipairs
	// __index.
	next := L.GetGlobal("next")
	L.SetGlobal("pairs", L.NewFunction(func(L *glua.LState) int {
		v := L.CheckAny(1)
		if mm := L.GetMetaField(v, "__pairs"); mm.Type() == glua.LTFunction {
			L.Push(mm)
			L.Push(v)
			L.Call(1, 3)
			return 3
		}
		L.Push(next)
		L.Push(L.CheckTable(1))
		L.Push(glua.LNil)
		return 3
	}))
	ipairsAux := L.NewFunction(func(L *glua.LState) int {
		i := L.CheckInt(2) + 1
		v := L.GetTable(L.Get(1), glua.LNumber(i))
		if v == glua.LNil {
			return 0
		}
		L.Push(glua.LNumber(i))
		L.Push(v)
		return 2
	})
	L.SetGlobal("ipairs", L.NewFunction(func(L *glua.LState) int {
		L.Push(ipairsAux)
		L.Push(L.CheckTable(1))
		L.Push(glua.LNumber(0))
		return 3
	}))
	L.SetGlobal("print", L.NewFunction(func(L *glua.LState) int {
		n := L.GetTop()
		parts := make([]string, 0, n)
		for i := 1; i <= n; i++ {
			parts = append(parts, L.ToStringMeta(L.Get(i)).String())
		}
		logger.Info(strings.Join(parts, "\t"), "script", script)
		return 0
	}))
	str := L.GetGlobal("string").(*glua.LTable)
	str.RawSetString("rep", L.NewFunction(ls.strRep))
	str.RawSetString("format", L.NewFunction(ls.strFormat))
	str.RawSetString("find", L.NewFunction(ls.strFind))
	str.RawSetString("match", L.NewFunction(ls.strMatch))
	str.RawSetString("gmatch", L.NewFunction(ls.strGmatch))
	str.RawSetString("gsub", L.NewFunction(ls.strGsub))
	str.RawSetString("dump", glua.LNil)
	tbl := L.GetGlobal("table").(*glua.LTable)
	tbl.RawSetString("concat", L.NewFunction(ls.tableConcat))
	ls.seeThroughProxies(L)
	// The string metatable is per state; lock it so getmetatable("") does
	// not hand out the table and setmetatable cannot replace it.
	if mt, ok := L.GetMetatable(glua.LString("")).(*glua.LTable); ok {
		mt.RawSetString("__metatable", glua.LString("locked"))
	}
	// Lock the library tables the host relies on: assignments raise.
	for _, name := range []string{"string", "table", "math"} {
		lockTable(L, g, name)
	}
	return L
}

// lockTable replaces global name (a table) by an empty read-only proxy whose
// __index is the original table. rawset on the proxy only affects this
// script's own state.
func lockTable(L *glua.LState, g *glua.LTable, name string) *glua.LTable {
	orig, ok := g.RawGetString(name).(*glua.LTable)
	if !ok {
		return nil
	}
	proxy := L.NewTable()
	mt := L.NewTable()
	mt.RawSetString("__index", orig)
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("%s is read-only", name)
		return 0
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	proxy.Metatable = mt
	g.RawSetString(name, proxy)
	return proxy
}

// errLine extracts "file:line" from a Lua error message.
var errLineRE = regexp.MustCompile(`([\w.\-]+\.lua):(\d+):`)

// splitLoc returns the file and line a Lua error message names, if any.
func splitLoc(msg string) (file string, line int) {
	m := errLineRE.FindStringSubmatch(msg)
	if m == nil {
		return "", 0
	}
	n, _ := strconv.Atoi(m[2])
	return m[1], n
}

// luaErrMessage returns the message of a PCall error without the traceback.
func luaErrMessage(err error) string {
	var ae *glua.ApiError
	if errors.As(err, &ae) {
		if ae.Object != nil && ae.Object != glua.LNil {
			if s, ok := ae.Object.(glua.LString); ok {
				return string(s)
			}
			return ae.Object.String()
		}
	}
	s := err.Error()
	if i := strings.Index(s, "\nstack traceback:"); i >= 0 {
		s = s[:i]
	}
	return s
}
