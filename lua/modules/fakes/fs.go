package fakes

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/usher-vm/usher/lua/modules/fs"
)

// Node is one directory or file of the fake tree.
type Node struct {
	Dir      bool
	Mode     iofs.FileMode
	UID, GID int
	Data     []byte
}

// FS is an in-memory directory tree implementing fs.Backend; its roots
// are what scripts seeded (fake_fs_roots).
type FS struct {
	mu    sync.Mutex
	nodes map[string]Node
	roots []string
	down  atomic.Bool
}

// Node returns the node at p.
func (f *FS) Node(p string) (Node, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[p]
	return n, ok
}

// Roots lists the roots seeded so far.
func (f *FS) Roots() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.roots...)
}

func (f *FS) resolve(p string) (string, []string, error) {
	if f.down.Load() {
		return "", nil, errors.New("fs: input/output error (fake)")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return fs.Resolve(f.roots, p)
}

// Mkdir creates p and its parents.
func (f *FS) Mkdir(p string, a fs.Attrs) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := root
	for _, c := range comps {
		cur += "/" + c
		n, ok := f.nodes[cur]
		if ok && !n.Dir {
			return fmt.Errorf("fs: %s is not a directory", cur)
		}
		f.nodes[cur] = Node{Dir: true, Mode: a.Mode, UID: a.UID, GID: a.GID}
	}
	return nil
}

// RemoveAll removes p and what lies below.
func (f *FS) RemoveAll(p string) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return fmt.Errorf("fs: refusing to remove the root %s", root)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := root + "/" + strings.Join(comps, "/")
	for k := range f.nodes {
		if k == c || strings.HasPrefix(k, c+"/") {
			delete(f.nodes, k)
		}
	}
	return nil
}

// Stat describes p.
func (f *FS) Stat(p string) (map[string]any, error) {
	root, comps, err := f.resolve(p)
	if err != nil {
		return nil, err
	}
	if len(comps) == 0 {
		return map[string]any{"type": "dir", "mode": "0755"}, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[root+"/"+strings.Join(comps, "/")]
	if !ok {
		return nil, nil
	}
	typ := "file"
	if n.Dir {
		typ = "dir"
	}
	return map[string]any{"type": typ, "mode": fmt.Sprintf("%04o", fs.Perm(n.Mode)), "uid": n.UID, "gid": n.GID, "size": len(n.Data)}, nil
}

// Write creates or replaces a file in an existing directory.
func (f *FS) Write(p string, data []byte, a fs.Attrs) error {
	root, comps, err := f.resolve(p)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return errors.New("fs: cannot write a root")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(comps) > 1 {
		if n, ok := f.nodes[root+"/"+strings.Join(comps[:len(comps)-1], "/")]; !ok || !n.Dir {
			return fmt.Errorf("fs: parent of %s does not exist", p)
		}
	}
	f.nodes[root+"/"+strings.Join(comps, "/")] = Node{Mode: a.Mode, UID: a.UID, GID: a.GID, Data: append([]byte(nil), data...)}
	return nil
}
