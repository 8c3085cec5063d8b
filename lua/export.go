package lua

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/api"
)

// This file is what the engine offers the rooms around it besides Host:
// the conversions and conventions site modules (lua/modules/...) share
// with the usher module, and the few entry points policy tooling
// (lua/policytool) needs to check and test scripts without a controller.

// PushErr returns nil, err.Error() and then extra to Lua: the convention
// of every module function that fails without raising.
func PushErr(L *glua.LState, err error, extra ...glua.LValue) int {
	L.Push(glua.LNil)
	L.Push(glua.LString(err.Error()))
	for _, e := range extra {
		L.Push(e)
	}
	return 2 + len(extra)
}

// FuncTable returns a new table of the given Go functions.
func FuncTable(L *glua.LState, fns map[string]glua.LGFunction) *glua.LTable {
	t := L.NewTable()
	for k, f := range fns {
		t.RawSetString(k, L.NewFunction(f))
	}
	return t
}

// ToString is a Lua value read as a string field: strings, numbers and
// booleans as text, anything else "".
func ToString(v glua.LValue) string { return luaString(v) }

// ToInt is a Lua number (or numeric string) as an int32-range integer.
func ToInt(v glua.LValue) (int, bool) { return luaInt(v) }

// Strings reads the list part of t with ToString (nil when empty).
func Strings(t *glua.LTable) []string { return luaStrings(t) }

// StringMap reads the string keys of t with ToString (nil when none).
func StringMap(t *glua.LTable) map[string]string { return luaStrMap(t) }

// StringList is xs as a Lua list.
func StringList(L *glua.LState, xs []string) *glua.LTable { return strList(L, xs) }

// ToLua converts plain Go data (maps, slices, strings, numbers, booleans;
// anything else through JSON) to Lua.
func ToLua(L *glua.LState, v any) glua.LValue { return toLua(L, v) }

// FromLua converts a Lua value to plain Go data (map[string]any, []any,
// string, float64, bool, nil); depth bounds the nesting of tables.
func FromLua(v glua.LValue, depth int) (any, error) { return fromLua(v, depth) }

// IdentityTable is an identity as handlers see it: {user, groups, admin}.
func IdentityTable(L *glua.LState, id api.Identity) *glua.LTable { return identityTable(L, id) }

// ErrMessage is the message of an error of a protected Lua call, without
// the traceback.
func ErrMessage(err error) string { return luaErrMessage(err) }

// Compile parses and compiles a Lua chunk; errors are "file:line: message"
// as in every policy error.
func Compile(src []byte, file string) (*glua.FunctionProto, error) { return compile(src, file) }

// CheckFile compiles the script at path and runs its top level in a fresh
// state of h, as loading it would, without publishing it: the check of
// `usher policy check`. It validates registrations (known events, valid
// intervals, duplicate handler names) and fails a script that registers
// no handler. Errors name file:line.
func (h *Host) CheckFile(path string) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	base := strings.TrimSuffix(filepath.Base(path), ".lua")
	sum := sha256.Sum256(src)
	v, err := h.newVersion(base, path, src, hex.EncodeToString(sum[:])[:12])
	if err != nil {
		return err
	}
	defer v.cancel()
	if len(v.regs) == 0 {
		return fmt.Errorf("%s: registers no handler (no usher.on or usher.every call)", filepath.Base(path))
	}
	return nil
}

// Sandbox returns a Lua state sandboxed like a policy's (base, table,
// string and math; require loads lib/<name>.lua from h's directories or,
// without any, from dir) but with neither the usher module nor site
// modules and no budget: where tooling runs its own files (file names the
// chunk in messages). print logs to h's logger. The caller closes it.
func (h *Host) Sandbox(dir, file string) *glua.LState {
	v := &version{h: h, name: strings.TrimSuffix(file, ".lua"), file: file, dir: dir, ctx: h.ctx, cancel: func() {}}
	ls := &lstate{v: v, memLimit: 256 << 20}
	ls.L = newSandbox(ls, h.opts.Logger, file)
	return ls.L
}
