package fakes

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/ldap"
)

// probe runs src as probe.lua with cfg as its config over the set's
// modules, firing its timers once.
func probe(t *testing.T, s *Set, opts lua.Options, cfg map[string]any, src string) error {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.lua"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.Dirs, opts.Modules, opts.PoolSize, opts.Logger = []string{dir}, s.Modules(), 1, slog.New(slog.DiscardHandler)
	opts.Config = map[string]map[string]any{"probe": cfg}
	h, err := lua.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h.RunTimers(context.Background(), "probe")
}

func TestFakesSeededFromConfig(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"fake_ldap":     []any{map[string]any{"dn": "uid=alice,ou=people,dc=x", "uid": "alice", "userPassword": "pw"}},
		"fake_dns_keys": []any{"usher-key."},
		"fake_fs_roots": []any{"/srv/sites"},
	}
	err = probe(t, s, lua.Options{}, cfg, `
usher.every("1h", function()
  assert(ldap.bind("ldap://fake", "uid=alice,ou=people,dc=x", "pw"))
  local ok, err, code = ldap.bind("ldap://fake", "uid=alice,ou=people,dc=x", "nope")
  assert(ok == false and code == 49, tostring(err))
  local c = ldap.conn{url = "ldap://fake", bind = "admin"}
  local es = assert(c:search{base = "dc=x", filter = "(uid=%s)", values = {"alice"}})
  assert(#es == 1 and es[1].attrs.uid[1] == "alice")
  assert(c:add("ou=web,dc=x", {ou = "web"}))
  assert(dns.update{server = "ns:53", zone = "usher.test", key = "usher-key.",
    add = {{name = "web1.usher.test", type = "A", data = "10.0.0.1"}}})
  local _, derr, rcode = dns.update{server = "ns:53", zone = "usher.test", key = "other.", add = {}}
  assert(rcode == 9 and derr:find("NOTAUTH"), tostring(derr))
  assert(fs.roots[1] == "/srv/sites" and #fs.roots == 1)
  assert(fs.mkdir("/srv/sites/a/b", {mode = "0750"}))
  assert(sql.driver == "sqlite" and sql.exec("create table t (a text)"))
end)`)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.LDAP().Entry("ou=web,dc=x"); !ok {
		t.Error("ldap entry not added")
	}
	if got := s.DNS().Records("web1.usher.test", "A"); len(got) != 1 || got[0] != "10.0.0.1" {
		t.Errorf("dns records %v", got)
	}
	if n, ok := s.FS().Node("/srv/sites/a/b"); !ok || !n.Dir || n.Mode != 0o750 {
		t.Errorf("fs node %+v %v", n, ok)
	}
}

func TestFakesDown(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	err = probe(t, s, lua.Options{}, map[string]any{"fake_down": []any{"ldap", "dns", "fs"}}, `
usher.every("1h", function()
  local ok, err, code = ldap.bind("ldap://fake", "uid=a", "pw")
  assert(ok == false and code == 0 and err:find("fake server down"), tostring(err))
  local r, derr, rcode = dns.lookup{server = "ns:53", name = "x"}
  assert(r == nil and derr:find("fake server down"), tostring(derr))
  local f, ferr = fs.mkdir("/srv/usher/x")
  assert(f == nil and ferr:find("input/output error"), tostring(ferr))
end)`)
	if err != nil {
		t.Fatal(err)
	}
}

// slowLDAP answers searches only after a wait longer than the handler's
// wall-clock backstop: a slow server.
type slowLDAP struct {
	*LDAP
	wait time.Duration
}

func (l slowLDAP) Search(ctx context.Context, ep ldap.Endpoint, q ldap.Search) ([]ldap.Entry, error) {
	select {
	case <-time.After(l.wait):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l.LDAP.Search(ctx, ep, q)
}

// TestNetCallNotChargedToBudget: a module call's wait is not charged to
// the handler: searches each slower than the whole wall-clock backstop
// do not cut the handler off.
func TestNetCallNotChargedToBudget(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	// Only the LDAP fake serves here: no host takes (and closes) the
	// set's modules.
	t.Cleanup(func() {
		for _, m := range s.Modules() {
			m.Close()
		}
	})
	const backstop = 200 * time.Millisecond
	slow := ldap.New(slowLDAP{s.LDAP(), backstop + 100*time.Millisecond})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.lua"), []byte(`
usher.every("1h", function()
  local c = ldap.conn{url = "ldap://fake", bind = "admin"}
  for i = 1, 3 do assert(c:search{base = "dc=x", filter = "(uid=%s)", values = {"a"}}) end
  local n = 0
  for i = 1, 20000 do n = n + i end -- instructions enough for the backstop to be checked
end)`), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := lua.New(lua.Options{Dirs: []string{dir}, Modules: []lua.Module{slow}, Budget: backstop, PoolSize: 1,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := h.RunTimers(context.Background(), "probe"); err != nil {
		t.Fatal(err)
	}
}

// TestNotInTheController: the composition root, and so every controller
// and LNM, is built without the stand-ins: no configuration can reach
// them.
func TestNotInTheController(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/usher-vm/usher/site").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/usher-vm/usher/lua/modules/fakes" || pkg == "github.com/usher-vm/usher/lua/policytool" {
			t.Errorf("site depends on %s", pkg)
		}
	}
}
