package lua

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runModScript loads src as a script with a timer and fires it once; the
// script signals failure with error(). It returns the host (closed by t).
func runModScript(t *testing.T, mc ModuleConfig, src string) (*Host, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.lua"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := New(Options{Dirs: []string{dir}, Modules: mc, PoolSize: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h, h.RunTimers(context.Background(), "probe")
}

func TestModulesAbsentUnlessConfigured(t *testing.T) {
	_, err := runModScript(t, ModuleConfig{}, `
usher.every("1h", function()
  assert(rawget(_G, "ldap") == nil and rawget(_G, "dns") == nil and rawget(_G, "sql") == nil and rawget(_G, "fs") == nil,
    "modules present without config")
end)`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runModScript(t, ModuleConfig{FSRoots: []string{t.TempDir()}}, `
usher.every("1h", function()
  assert(fs ~= nil and rawget(_G, "sql") == nil and rawget(_G, "ldap") == nil, "only fs expected")
  local ok = pcall(function() fs.mkdir = nil end)
  assert(not ok, "fs must be read-only")
end)`)
	if err != nil {
		t.Fatal(err)
	}
}

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
	r, err := newFSRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	a := fsAttrs{mode: 0o750, uid: -1, gid: -1}
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
		if err := r.mkdir(p, a); err == nil {
			t.Errorf("mkdir %q succeeded", p)
		}
		if strings.HasSuffix(p, "/escape") {
			continue // removing the symlink entry itself is allowed (tested below)
		}
		if err := r.rmtree(p); err == nil {
			t.Errorf("rmtree %q succeeded", p)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("outside file touched: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("outside dir changed: %v", ents)
	}
	if err := r.rmtree(root); err == nil {
		t.Error("removing the root itself succeeded")
	}
	// good paths
	p := filepath.Join(root, "vms", "alice", "web1", "etc", "rc3.d")
	if err := r.mkdir(p, fsAttrs{mode: toFileMode(0o2750), uid: 1234, gid: 4321}); err != nil {
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
	if err := r.mkdir(p, fsAttrs{mode: toFileMode(0o2750), uid: -1, gid: -1}); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Lstat(p)
	if fsPerm(fi.Mode()) != 0o2750 {
		t.Errorf("mode %o", fsPerm(fi.Mode()))
	}
	if err := r.write(filepath.Join(p, "S99hello"), []byte("#!/bin/sh\n"), fsAttrs{mode: 0o755, uid: -1, gid: -1}); err != nil {
		t.Fatal(err)
	}
	if err := r.write(filepath.Join(root, "escape"), []byte("x"), a); err == nil {
		t.Error("write through a symlink succeeded")
	}
	if err := r.rmtree(filepath.Join(root, "vms", "alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "vms", "alice")); !os.IsNotExist(err) {
		t.Fatalf("not removed: %v", err)
	}
	if err := r.rmtree(filepath.Join(root, "vms", "nobody", "x")); err != nil {
		t.Fatalf("missing path: %v", err)
	}
	// rmtree of the symlink removes the link, never the target's content
	if err := r.rmtree(filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("outside file removed through a symlink: %v", err)
	}
}

func TestFSFromLua(t *testing.T) {
	root := t.TempDir()
	_, err := runModScript(t, ModuleConfig{FSRoots: []string{root}}, `
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

func TestSQLParameterized(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.db")
	_, err := runModScript(t, ModuleConfig{SQLPath: path}, `
usher.every("1h", function()
  assert(sql.exec("create table users (name text primary key, note text)"))
  local evil = "x'); drop table users; --"
  assert(sql.exec("insert into users (name, note) values (?, ?)", {evil, "it's"}))
  local rows = assert(sql.query("select name, note from users where name = ?", {evil}))
  assert(#rows == 1 and rows[1].name == evil and rows[1].note == "it's")
  -- several statements, comments and named parameters are refused
  assert(not pcall(sql.exec, "delete from users; drop table users"))
  assert(not pcall(sql.query, "select * from users -- x"))
  assert(not pcall(sql.query, "select * from users where name = $1", {"a"}))
  assert(not pcall(sql.query, "select * from users where name = ?", {"a", "b"}))
  assert(#sql.query("select * from users where name = ?", {}) == 0, "missing trailing parameter is NULL")
  assert(not pcall(sql.query, "select * from users where name = ?", {{}}))
  -- a unique violation is an error value, not a raise
  local ok, err = sql.exec("insert into users (name) values (?)", {evil})
  assert(ok == nil and err:find("UNIQUE"), tostring(err))
  -- tx: an error rolls back; success commits and returns the results
  local r, e = sql.tx(function(tx)
    tx.exec("insert into users (name) values (?)", {"bob"})
    error("boom")
  end)
  assert(r == nil and e:find("boom"))
  assert(#sql.query("select name from users where name = ?", {"bob"}) == 0, "rolled back")
  local ok2, n = sql.tx(function(tx)
    sql.exec("insert into users (name) values (?)", {"carol"}) -- uses the tx too
    return #tx.query("select name from users")
  end)
  assert(ok2 == true and n == 2, tostring(n))
  local nulls = sql.query("select note from users where name = ?", {"carol"})
  assert(nulls[1].note == nil)
end)`)
	if err != nil {
		t.Fatal(err)
	}
	// the file holds what Lua wrote, with the hostile value stored verbatim
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("select count(*) from users where name like 'x''); drop%'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("count %d err %v", n, err)
	}
}

func TestCheckSQL(t *testing.T) {
	q, n, err := checkSQL("select * from t where a = ? and b = '?' and c = ?;", "pgx")
	if err != nil || n != 2 || q != "select * from t where a = $1 and b = '?' and c = $2" {
		t.Fatalf("%q %d %v", q, n, err)
	}
	for _, bad := range []string{"select 1; select 2", "select '1", "select 1 /* x */"} {
		if _, _, err := checkSQL(bad, "sqlite"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestLDAPFilterEscaping(t *testing.T) {
	f, err := ldapFilter("(&(objectClass=posixAccount)(uid=%s))", []string{"*)(uid=*"})
	if err != nil {
		t.Fatal(err)
	}
	if f != `(&(objectClass=posixAccount)(uid=\2a\29\28uid=\2a))` {
		t.Fatalf("got %s", f)
	}
	for _, c := range []struct {
		f    string
		vals []string
	}{{"(uid=%d)", []string{"1"}}, {"(uid=%s)", nil}, {"(uid=x)", []string{"y"}}, {"(uid=%s", []string{"a"}}} {
		if _, err := ldapFilter(c.f, c.vals); err == nil {
			t.Errorf("%q %v accepted", c.f, c.vals)
		}
	}
}

func TestParseModuleConfig(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	c, err := ParseModuleConfig(map[string]any{
		"timeout":  "2s",
		"fs_roots": []any{"/srv/a"},
		"sql_path": "/var/lib/usher/site.db",
		"ldap": map[string]any{"servers": []any{"ldap://127.0.0.1:3890"}, "plain_loopback": true,
			"binds": map[string]any{"admin": map[string]any{"dn": "cn=admin,dc=x", "password_file": pw}}},
		"dns": map[string]any{"servers": []any{"127.0.0.1:5353"},
			"keys": map[string]any{"usher-key.": map[string]any{"algorithm": "hmac-sha256", "secret": "c2VjcmV0"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Timeout.String() != "2s" || c.LDAP.Binds["admin"].Password != "s3cret" || !c.LDAP.PlainLoopback ||
		c.DNS.Keys["usher-key."].Secret != "c2VjcmV0" || c.SQLPath == "" || len(c.FSRoots) != 1 {
		t.Fatalf("%+v", c)
	}
	if _, err := ParseModuleConfig(map[string]any{"sql_path": int64(3)}); err == nil {
		t.Fatal("bad type accepted")
	}
}

func TestNetCallNotChargedToBudget(t *testing.T) {
	// A fake LDAP call that waits longer than the CPU budget does not cut
	// the handler: the wait is paused from the budget.
	h, err := runModScript(t, ModuleConfig{Fake: true}, `
usher.every("1h", function()
  local c = ldap.conn{url = "ldap://fake", bind = "admin"}
  for i = 1, 3 do assert(c:search{base = "dc=x", filter = "(uid=%s)", values = {"a"}}) end
end)`)
	_ = h
	if err != nil {
		t.Fatal(err)
	}
}
