package lua

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	glua "github.com/yuin/gopher-lua"
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

type fsAttrs struct {
	mode     fs.FileMode
	uid, gid int // -1 = leave
}

type fsBackend interface {
	mkdir(path string, a fsAttrs) error
	rmtree(path string) error
	stat(path string) (map[string]any, error)
	write(path string, data []byte, a fsAttrs) error
	rootList() []string
}

type fsRoots struct{ roots []string }

func newFSRoots(roots []string) (*fsRoots, error) {
	r := &fsRoots{}
	for _, p := range roots {
		c, err := cleanAbs(p)
		if err != nil {
			return nil, fmt.Errorf("fs_roots: %v", err)
		}
		if c == "/" {
			return nil, errors.New("fs_roots: / is not allowed")
		}
		real, err := filepath.EvalSymlinks(c)
		if err != nil {
			return nil, fmt.Errorf("fs_roots: %v", err)
		}
		fi, err := os.Stat(real)
		if err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("fs_roots: %s is not a directory", p)
		}
		r.roots = append(r.roots, real)
	}
	return r, nil
}

func (r *fsRoots) rootList() []string { return append([]string(nil), r.roots...) }

// resolve splits path into (root, relative components). It refuses "..",
// paths outside every root and the root itself unless allowRoot.
func (r *fsRoots) resolve(p string) (string, []string, error) {
	if !filepath.IsAbs(p) {
		return "", nil, fmt.Errorf("fs: %q is not an absolute path", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", nil, fmt.Errorf("fs: %q contains ..", p)
		}
	}
	if strings.ContainsRune(p, 0) {
		return "", nil, errors.New("fs: NUL in path")
	}
	c := filepath.Clean(p)
	for _, root := range r.roots {
		if c == root {
			return root, nil, nil
		}
		if strings.HasPrefix(c, root+"/") {
			return root, strings.Split(strings.TrimPrefix(c, root+"/"), "/"), nil
		}
	}
	return "", nil, fmt.Errorf("fs: %s is not below a configured root (policy.modules.fs_roots)", p)
}

// walk opens root and Lstats each existing component of rel; it fails on a
// symlink or a non-directory on the way. It returns how many leading
// components exist.
func walk(rt *os.Root, comps []string, checkLast bool) (int, error) {
	for i := range comps {
		p := filepath.Join(comps[:i+1]...)
		fi, err := rt.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return i, nil
		}
		if err != nil {
			return i, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return i, fmt.Errorf("fs: %s is a symlink; refused", p)
		}
		if i < len(comps)-1 || checkLast {
			if !fi.IsDir() {
				return i, fmt.Errorf("fs: %s is not a directory", p)
			}
		}
	}
	return len(comps), nil
}

func (r *fsRoots) mkdir(p string, a fsAttrs) error {
	root, comps, err := r.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return nil // the root exists
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	have, err := walk(rt, comps, true)
	if err != nil {
		return err
	}
	for i := have; i < len(comps); i++ {
		sub := filepath.Join(comps[:i+1]...)
		if err := rt.Mkdir(sub, a.mode.Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("fs: %w", err)
		}
		if err := setAttrs(rt, sub, a); err != nil {
			return err
		}
	}
	if have == len(comps) { // existed: bring owner and mode in line
		return setAttrs(rt, filepath.Join(comps...), a)
	}
	return nil
}

func setAttrs(rt *os.Root, sub string, a fsAttrs) error {
	// Lstat again: refuse a symlink swapped in since we created the entry.
	fi, err := rt.Lstat(sub)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("fs: %s became a symlink; refused", sub)
	}
	if a.uid >= 0 || a.gid >= 0 {
		if err := rt.Lchown(sub, a.uid, a.gid); err != nil {
			return fmt.Errorf("fs: %w", err)
		}
	}
	if err := rt.Chmod(sub, a.mode); err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	return nil
}

func (r *fsRoots) rmtree(p string) error {
	root, comps, err := r.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return fmt.Errorf("fs: refusing to remove the root %s", root)
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	have, err := walk(rt, comps[:len(comps)-1], true)
	if err != nil {
		return err
	}
	if have < len(comps)-1 {
		return nil // a parent is missing: nothing to remove
	}
	if err := rt.RemoveAll(filepath.Join(comps...)); err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	return nil
}

func (r *fsRoots) stat(p string) (map[string]any, error) {
	root, comps, err := r.resolve(p)
	if err != nil {
		return nil, err
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	if len(comps) > 1 {
		if have, err := walk(rt, comps[:len(comps)-1], true); err != nil || have < len(comps)-1 {
			return nil, err
		}
	}
	fi, err := rt.Lstat(filepath.Join(append([]string{"."}, comps...)...))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return fileInfoMap(fi), nil
}

func (r *fsRoots) write(p string, data []byte, a fsAttrs) error {
	root, comps, err := r.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return errors.New("fs: cannot write a root")
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	have, err := walk(rt, comps, false)
	if err != nil {
		return err
	}
	if have < len(comps)-1 {
		return fmt.Errorf("fs: parent of %s does not exist", p)
	}
	sub := filepath.Join(comps...)
	if have == len(comps) {
		if err := rt.Remove(sub); err != nil {
			return fmt.Errorf("fs: %w", err)
		}
	}
	f, err := rt.OpenFile(sub, os.O_WRONLY|os.O_CREATE|os.O_EXCL, a.mode.Perm())
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	return setAttrs(rt, sub, a)
}

// --- Lua glue ---------------------------------------------------------------

func parseMode(v glua.LValue, def fs.FileMode) (fs.FileMode, error) {
	switch x := v.(type) {
	case *glua.LNilType:
		return def, nil
	case glua.LNumber:
		if x < 0 || x > 0o7777 {
			return 0, fmt.Errorf("mode %v out of range", x)
		}
		return fs.FileMode(x), nil
	case glua.LString:
		n, err := strconv.ParseUint(string(x), 8, 32)
		if err != nil || n > 0o7777 {
			return 0, fmt.Errorf("mode %q: want an octal string like \"0755\"", string(x))
		}
		return fs.FileMode(n), nil
	}
	return 0, fmt.Errorf("mode must be an octal string or a number")
}

// toFileMode turns permission bits with setuid/setgid/sticky into os bits.
func toFileMode(m fs.FileMode) fs.FileMode {
	out := m & 0o777
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
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

func readAttrs(L *glua.LState, n int, def fs.FileMode) fsAttrs {
	a := fsAttrs{mode: def, uid: -1, gid: -1}
	t := L.OptTable(n, nil)
	if t == nil {
		return a
	}
	m, err := parseMode(t.RawGetString("mode"), def)
	if err != nil {
		L.ArgError(n, err.Error())
	}
	a.mode = toFileMode(m)
	if a.uid, err = lookupID(t.RawGetString("owner"), false); err != nil {
		L.ArgError(n, "owner: "+err.Error())
	}
	if a.gid, err = lookupID(t.RawGetString("group"), true); err != nil {
		L.ArgError(n, "group: "+err.Error())
	}
	return a
}

func fileInfoMap(fi fs.FileInfo) map[string]any {
	typ := "other"
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		typ = "symlink"
	case fi.IsDir():
		typ = "dir"
	case fi.Mode().IsRegular():
		typ = "file"
	}
	m := map[string]any{"type": typ, "mode": fmt.Sprintf("%04o", fsPerm(fi.Mode())), "size": fi.Size()}
	uid, gid := fileOwner(fi)
	if uid >= 0 {
		m["uid"], m["gid"] = uid, gid
	}
	return m
}

func fsPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// maxFSWrite bounds fs.write.
const maxFSWrite = 1 << 20

func (ls *lstate) fsModule(b fsBackend) *glua.LTable {
	L := ls.L
	var err error
	run := func(L *glua.LState, f func() error) int {
		ls.call.pause(func() { err = f() })
		if err != nil {
			return pushErr(L, err)
		}
		L.Push(glua.LTrue)
		return 1
	}
	t := modTable(L, map[string]glua.LGFunction{
		"mkdir": func(L *glua.LState) int {
			p := L.CheckString(1)
			a := readAttrs(L, 2, 0o755)
			return run(L, func() error { return b.mkdir(p, a) })
		},
		"rmtree": func(L *glua.LState) int {
			p := L.CheckString(1)
			return run(L, func() error { return b.rmtree(p) })
		},
		"write": func(L *glua.LState) int {
			p := L.CheckString(1)
			data := L.CheckString(2)
			if len(data) > maxFSWrite {
				L.ArgError(2, "fs.write: content over 1 MB")
			}
			a := readAttrs(L, 3, 0o644)
			return run(L, func() error { return b.write(p, []byte(data), a) })
		},
		"stat": func(L *glua.LState) int {
			p := L.CheckString(1)
			var m map[string]any
			ls.call.pause(func() { m, err = b.stat(p) })
			if err != nil {
				return pushErr(L, err)
			}
			if m == nil {
				L.Push(glua.LNil)
				return 1
			}
			L.Push(toLua(L, m))
			return 1
		},
	})
	t.RawSetString("roots", strList(L, b.rootList()))
	return t
}

func fileOwner(fi fs.FileInfo) (int, int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}
