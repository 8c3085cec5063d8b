package lua

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	glua "github.com/yuin/gopher-lua"
)

// libNameRE is what require accepts: a bare name, no dots, slashes or paths.
var libNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// libRef is one library file version a script version loaded.
type libRef struct {
	name  string
	path  string
	hash  string
	proto *glua.FunctionProto
}

// libDirs lists where require looks for lib/<name>.lua: the site dirs
// before the shipped one (Dirs reversed), so a site overrides a shipped
// library. A host without Dirs (Check, the test runner state) resolves
// relative to the script's own directory.
func (v *version) libDirs() []string {
	ds := v.h.opts.Dirs
	if len(ds) == 0 {
		if v.dir == "" {
			return nil
		}
		return []string{v.dir}
	}
	out := make([]string, 0, len(ds))
	for i := len(ds) - 1; i >= 0; i-- {
		out = append(out, ds[i])
	}
	return out
}

// findLib returns the path and content of the library name as seen now.
func findLib(dirs []string, name string) (string, []byte, error) {
	var tried []string
	for _, d := range dirs {
		p := filepath.Join(d, "lib", name+".lua")
		src, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			tried = append(tried, p)
			continue
		}
		if err != nil {
			return p, nil, fmt.Errorf("%s: %v", p, err)
		}
		return p, src, nil
	}
	if len(tried) == 0 {
		return "", nil, fmt.Errorf("library not found: no policy directories")
	}
	return "", nil, fmt.Errorf("library not found (tried %s)", strings.Join(tried, ", "))
}

func hashOf(src []byte) string {
	sum := sha256.Sum256(src)
	return hex.EncodeToString(sum[:])[:12]
}

// libProto compiles a library file version once per host.
func (h *Host) libProto(path string, src []byte, hash string) (*glua.FunctionProto, error) {
	key := path + "\x00" + hash
	h.libMu.Lock()
	defer h.libMu.Unlock()
	if p := h.libProtos[key]; p != nil {
		return p, nil
	}
	p, err := compile(src, path)
	if err != nil {
		return nil, err
	}
	if h.libProtos == nil {
		h.libProtos = map[string]*glua.FunctionProto{}
	}
	h.libProtos[key] = p
	return p, nil
}

// lib returns the library name for this version: the file version the
// version first loaded (every state of a version runs the same library
// code), resolved and compiled on first use.
func (v *version) lib(name string) (*libRef, error) {
	v.libMu.Lock()
	defer v.libMu.Unlock()
	if v.tried == nil {
		v.tried = map[string]bool{}
	}
	v.tried[name] = true
	if r := v.libs[name]; r != nil {
		return r, nil
	}
	path, src, err := findLib(v.libDirs(), name)
	if err != nil {
		return nil, err
	}
	hash := hashOf(src)
	proto, err := v.h.libProto(path, src, hash)
	if err != nil {
		return nil, err
	}
	r := &libRef{name: name, path: path, hash: hash, proto: proto}
	if v.libs == nil {
		v.libs = map[string]*libRef{}
	}
	v.libs[name] = r
	return r, nil
}

// libNames lists the libraries this version required or tried to.
func (v *version) libNames() []string {
	v.libMu.Lock()
	defer v.libMu.Unlock()
	out := make([]string, 0, len(v.tried))
	for n := range v.tried {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// libsCurrent reports whether every library this version loaded still
// resolves to the same file and content.
func (v *version) libsCurrent() bool {
	v.libMu.Lock()
	refs := make([]*libRef, 0, len(v.libs))
	for _, r := range v.libs {
		refs = append(refs, r)
	}
	v.libMu.Unlock()
	dirs := v.libDirs()
	for _, r := range refs {
		path, src, err := findLib(dirs, r.name)
		if err != nil || path != r.path || hashOf(src) != r.hash {
			return false
		}
	}
	return true
}

// apiRequire is the sandboxed require: it loads lib/<name>.lua from the
// policy directories once per state, runs it in this state (same sandbox,
// same budget as the calling code) and caches its return value.
func (ls *lstate) apiRequire(L *glua.LState) int {
	name := L.CheckString(1)
	if !libNameRE.MatchString(name) {
		L.RaiseError("require %q: invalid library name (want [a-z][a-z0-9_]*; libraries are lib/<name>.lua in the policy directories)", name)
	}
	if val, ok := ls.loaded[name]; ok {
		L.Push(val)
		return 1
	}
	if ls.loading[name] {
		L.RaiseError("require %q: circular require", name)
	}
	if ls.v == nil || ls.v.h == nil {
		L.RaiseError("require %q: not available here", name)
	}
	ref, err := ls.v.lib(name)
	if err != nil {
		L.RaiseError("require %q: %v", name, err)
	}
	if ls.loading == nil {
		ls.loading = map[string]bool{}
	}
	ls.loading[name] = true
	defer delete(ls.loading, name)
	L.Push(L.NewFunctionFromProto(ref.proto))
	L.Push(glua.LString(name))
	if err := L.PCall(1, 1, nil); err != nil {
		L.RaiseError("require %q (%s): %s", name, ref.path, luaErrMessage(err))
	}
	val := L.Get(-1)
	L.Pop(1)
	if val == glua.LNil {
		val = glua.LTrue
	}
	if ls.loaded == nil {
		ls.loaded = map[string]glua.LValue{}
	}
	ls.loaded[name] = val
	L.Push(val)
	return 1
}
