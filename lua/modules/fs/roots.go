package fs

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Attrs are the mode and owner fs gives what it creates.
type Attrs struct {
	Mode     iofs.FileMode
	UID, GID int // -1 = leave
}

// Backend is what the fs table calls: the real Roots, or a stand-in.
// Paths are absolute; errors are returned to scripts as nil, err.
type Backend interface {
	// Mkdir creates path and its missing parents with a's mode and owner.
	Mkdir(path string, a Attrs) error
	// RemoveAll removes path and everything below it (missing is fine;
	// a root itself never).
	RemoveAll(path string) error
	// Stat describes path ({type, mode, uid, gid, size}), nil if missing.
	Stat(path string) (map[string]any, error)
	// Write creates or replaces the file path.
	Write(path string, data []byte, a Attrs) error
	// Roots lists the roots.
	Roots() []string
}

// Roots is the real backend: the configured directories, worked on
// through os.Root.
type Roots struct{ roots []string }

// NewRoots checks that each root is an absolute directory other than /
// and resolves its symlinks once.
func NewRoots(roots []string) (*Roots, error) {
	r := &Roots{}
	for _, p := range roots {
		c, err := cleanAbs(p)
		if err != nil {
			return nil, fmt.Errorf("policy.modules.fs.roots: %v", err)
		}
		if c == "/" {
			return nil, errors.New("policy.modules.fs.roots: / is not allowed")
		}
		real, err := filepath.EvalSymlinks(c)
		if err != nil {
			return nil, fmt.Errorf("policy.modules.fs.roots: %v", err)
		}
		fi, err := os.Stat(real)
		if err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("policy.modules.fs.roots: %s is not a directory", p)
		}
		r.roots = append(r.roots, real)
	}
	return r, nil
}

// Roots lists the roots.
func (r *Roots) Roots() []string { return append([]string(nil), r.roots...) }

func (r *Roots) resolve(p string) (string, []string, error) { return Resolve(r.roots, p) }

// Resolve splits the absolute path p into the root of roots it lies in
// and its components below (none for the root itself). It refuses "..",
// NUL and paths outside every root. Stand-ins use it to refuse what Roots
// would.
func Resolve(roots []string, p string) (string, []string, error) {
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
	for _, root := range roots {
		if c == root {
			return root, nil, nil
		}
		if strings.HasPrefix(c, root+"/") {
			return root, strings.Split(strings.TrimPrefix(c, root+"/"), "/"), nil
		}
	}
	return "", nil, fmt.Errorf("fs: %s is not below a configured root (policy.modules.fs.roots)", p)
}

// walk opens root and Lstats each existing component of rel; it fails on a
// symlink or a non-directory on the way. It returns how many leading
// components exist.
func walk(rt *os.Root, comps []string, checkLast bool) (int, error) {
	for i := range comps {
		p := filepath.Join(comps[:i+1]...)
		fi, err := rt.Lstat(p)
		if errors.Is(err, iofs.ErrNotExist) {
			return i, nil
		}
		if err != nil {
			return i, err
		}
		if fi.Mode()&iofs.ModeSymlink != 0 {
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

// Mkdir creates p and its missing parents.
func (r *Roots) Mkdir(p string, a Attrs) error {
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
		if err := rt.Mkdir(sub, a.Mode.Perm()); err != nil && !errors.Is(err, iofs.ErrExist) {
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

func setAttrs(rt *os.Root, sub string, a Attrs) error {
	// Lstat again: refuse a symlink swapped in since we created the entry.
	fi, err := rt.Lstat(sub)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	if fi.Mode()&iofs.ModeSymlink != 0 {
		return fmt.Errorf("fs: %s became a symlink; refused", sub)
	}
	if a.UID >= 0 || a.GID >= 0 {
		if err := rt.Lchown(sub, a.UID, a.GID); err != nil {
			return fmt.Errorf("fs: %w", err)
		}
	}
	if err := rt.Chmod(sub, a.Mode); err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	return nil
}

// RemoveAll removes p and everything below it.
func (r *Roots) RemoveAll(p string) error {
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

// Stat describes p without following a symlink.
func (r *Roots) Stat(p string) (map[string]any, error) {
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
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return fileInfoMap(fi), nil
}

// Write creates or replaces the file p.
func (r *Roots) Write(p string, data []byte, a Attrs) error {
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
	f, err := rt.OpenFile(sub, os.O_WRONLY|os.O_CREATE|os.O_EXCL, a.Mode.Perm())
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

// cleanAbs is filepath.Clean of an absolute path, or an error.
func cleanAbs(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	return filepath.Clean(p), nil
}

func fileInfoMap(fi iofs.FileInfo) map[string]any {
	typ := "other"
	switch {
	case fi.Mode()&iofs.ModeSymlink != 0:
		typ = "symlink"
	case fi.IsDir():
		typ = "dir"
	case fi.Mode().IsRegular():
		typ = "file"
	}
	m := map[string]any{"type": typ, "mode": fmt.Sprintf("%04o", Perm(fi.Mode())), "size": fi.Size()}
	uid, gid := fileOwner(fi)
	if uid >= 0 {
		m["uid"], m["gid"] = uid, gid
	}
	return m
}

// Perm is m's permission bits with setuid, setgid and sticky as octal
// 04000, 02000 and 01000 (what fs.stat reports as "mode").
func Perm(m iofs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&iofs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&iofs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&iofs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

func fileOwner(fi iofs.FileInfo) (int, int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}
