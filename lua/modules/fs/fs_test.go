package fs

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/internal/modtest"
)

func TestFSPathEscapes(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// a symlink inside the root pointing out, and one pointing inside
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "real"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "real"), filepath.Join(root, "inner")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := NewRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	a := Attrs{Mode: 0o750, UID: -1, GID: -1}
	bad := []string{
		root + "/../outside/x",      // ..
		root + "/a/../../outside/x", // .. deeper
		outside + "/x",              // absolute path elsewhere
		"relative/x",                // not absolute
		root + "/escape/x",          // symlink pointing out
		root + "/inner/x",           // symlink pointing in: refused too
		root + "x/y",                // sibling with the root as prefix
		"/",                         // far outside
		root + "/escape",            // the symlink itself as target dir
	}
	for _, p := range bad {
		if err := r.Mkdir(p, a); err == nil {
			t.Errorf("mkdir %q succeeded", p)
		}
		if strings.HasSuffix(p, "/escape") {
			continue // removing the symlink entry itself is allowed (tested below)
		}
		if err := r.RemoveAll(p); err == nil {
			t.Errorf("rmtree %q succeeded", p)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("outside file touched: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("outside dir changed: %v", ents)
	}
	if err := r.RemoveAll(root); err == nil {
		t.Error("removing the root itself succeeded")
	}
	// good paths
	p := filepath.Join(root, "vms", "alice", "web1", "etc", "rc3.d")
	if err := r.Mkdir(p, Attrs{Mode: toFileMode(0o2750), UID: 1234, GID: 4321}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() {
		t.Fatalf("not created: %v", err)
	}
	if os.Geteuid() == 0 {
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 1234 || st.Gid != 4321 {
			t.Errorf("owner %d:%d", st.Uid, st.Gid)
		}
	}
	if err := r.Mkdir(p, Attrs{Mode: toFileMode(0o2750), UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Lstat(p)
	if Perm(fi.Mode()) != 0o2750 {
		t.Errorf("mode %o", Perm(fi.Mode()))
	}
	if err := r.Write(filepath.Join(p, "S99hello"), []byte("#!/bin/sh\n"), Attrs{Mode: 0o755, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := r.Write(filepath.Join(root, "escape"), []byte("x"), a); err == nil {
		t.Error("write through a symlink succeeded")
	}
	if err := r.RemoveAll(filepath.Join(root, "vms", "alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "vms", "alice")); !os.IsNotExist(err) {
		t.Fatalf("not removed: %v", err)
	}
	if err := r.RemoveAll(filepath.Join(root, "vms", "nobody", "x")); err != nil {
		t.Fatalf("missing path: %v", err)
	}
	// rmtree of the symlink removes the link, never the target's content
	if err := r.RemoveAll(filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("outside file removed through a symlink: %v", err)
	}
}

func TestFSFromLua(t *testing.T) {
	root := t.TempDir()
	r, err := NewRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	_, err = modtest.Run(t, []lua.Module{New(r)}, `
usher.every("1h", function()
  local r = fs.roots[1]
  assert(fs.mkdir(r .. "/clusters/web-alice/etc/init.d", {mode = "0770"}))
  local st = fs.stat(r .. "/clusters/web-alice/etc/init.d")
  assert(st and st.type == "dir" and st.mode == "0770", "stat: " .. tostring(st and st.mode))
  local ok, err = fs.mkdir(r .. "/../x")
  assert(not ok and err:find("%.%."), "escape allowed: " .. tostring(err))
  ok, err = fs.mkdir("/etc/usher-test")
  assert(not ok and err:find("not below"), tostring(err))
  assert(fs.rmtree(r .. "/clusters/web-alice"))
  assert(fs.stat(r .. "/clusters/web-alice") == nil)
end)`)
	if err != nil {
		t.Fatal(err)
	}
}
