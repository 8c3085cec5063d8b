package modules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/lua/modules/dns"
	"github.com/usher-vm/usher/lua/modules/internal/modtest"
	"github.com/usher-vm/usher/lua/modules/ldap"
)

func TestModulesAbsentUnlessConfigured(t *testing.T) {
	mods, timeout, err := Open(nil)
	if err != nil || len(mods) != 0 || timeout != 5*time.Second {
		t.Fatalf("empty section: %v %v %v", mods, timeout, err)
	}
	_, err = modtest.Run(t, mods, `
usher.every("1h", function()
  assert(rawget(_G, "ldap") == nil and rawget(_G, "dns") == nil and rawget(_G, "sql") == nil and rawget(_G, "fs") == nil,
    "modules present without config")
end)`)
	if err != nil {
		t.Fatal(err)
	}
	mods, _, err = Open(map[string]any{"fs": map[string]any{"roots": []any{t.TempDir()}}})
	if err != nil || len(mods) != 1 {
		t.Fatalf("fs only: %v %v", mods, err)
	}
	_, err = modtest.Run(t, mods, `
usher.every("1h", function()
  assert(fs ~= nil and rawget(_G, "sql") == nil and rawget(_G, "ldap") == nil, "only fs expected")
  local ok = pcall(function() fs.mkdir = nil end)
  assert(not ok, "fs must be read-only")
end)`)
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenEveryModule(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ldapSec := map[string]any{"servers": []any{"ldap://127.0.0.1:3890"}, "plain_loopback": true,
		"binds": map[string]any{"admin": map[string]any{"dn": "cn=admin,dc=x", "password_file": pw}}}
	dnsSec := map[string]any{"servers": []any{"127.0.0.1:5353"},
		"keys": map[string]any{"usher-key.": map[string]any{"algorithm": "hmac-sha256", "secret": "c2VjcmV0"}}}
	mods, timeout, err := Open(map[string]any{
		"timeout": "2s",
		"ldap":    ldapSec,
		"dns":     dnsSec,
		"sql":     map[string]any{"path": filepath.Join(dir, "site.db")},
		"fs":      map[string]any{"roots": []any{dir}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name())
		defer m.Close()
	}
	if timeout != 2*time.Second || strings.Join(names, ",") != "ldap,dns,sql,fs" {
		t.Fatalf("timeout %v modules %v", timeout, names)
	}
	lc, err := ldap.ParseConfig(ldapSec)
	if err != nil || lc.Binds["admin"].Password != "s3cret" || !lc.PlainLoopback || len(lc.Servers) != 1 {
		t.Fatalf("ldap %+v %v", lc, err)
	}
	dc, err := dns.ParseConfig(dnsSec)
	if err != nil || dc.Keys["usher-key."].Secret != "c2VjcmV0" {
		t.Fatalf("dns %+v %v", dc, err)
	}
	if _, timeout, err := Open(map[string]any{"timeout": int64(3)}); err != nil || timeout != 3*time.Second {
		t.Fatalf("timeout in seconds: %v %v", timeout, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		m    map[string]any
		want string
	}{
		{map[string]any{"ldpa": map[string]any{}}, "policy.modules.ldpa: unknown key (known: timeout, ldap, dns, sql, fs)"},
		{map[string]any{"fs_roots": []any{dir}}, "policy.modules.fs_roots: unknown key (known: timeout, ldap, dns, sql, fs)"},
		{map[string]any{"fake": true}, "policy.modules.fake: unknown key"},
		{map[string]any{"timeout": "soon"}, "policy.modules.timeout"},
		{map[string]any{"sql": "x.db"}, "policy.modules.sql: must be a table"},
		{map[string]any{"sql": map[string]any{"path": int64(3)}}, "policy.modules.sql.path: must be a string"},
		{map[string]any{"sql": map[string]any{"file": "x.db"}}, "policy.modules.sql.file: unknown key (known: path, dsn)"},
		{map[string]any{"sql": map[string]any{"path": "a.db", "dsn": "postgres://x"}}, "not both"},
		{map[string]any{"fs": map[string]any{}}, "policy.modules.fs.roots: required"},
		{map[string]any{"fs": map[string]any{"roots": []any{"/"}}}, "/ is not allowed"},
		{map[string]any{"ldap": map[string]any{"servers": []any{"ldap://x"}, "binds": map[string]any{"a": map[string]any{"dn": "cn=a", "pasword": "x"}}}},
			"policy.modules.ldap.binds.a.pasword: unknown key"},
		{map[string]any{"ldap": map[string]any{"servers": []any{"ldap://x"}, "binds": map[string]any{"a": map[string]any{"dn": "cn=a", "password_file": filepath.Join(dir, "nope")}}}},
			"policy.modules.ldap.binds.a.password_file: open"},
		{map[string]any{"ldap": map[string]any{"servers": []any{"http://x"}}}, "ldap server \"http://x\""},
		{map[string]any{"dns": map[string]any{"servers": []any{"ns1"}}}, "dns server \"ns1\": want host:port"},
	} {
		mods, _, err := Open(c.m)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.m, err, c.want)
		}
		if mods != nil {
			t.Errorf("%v: modules %v returned with an error", c.m, mods)
		}
	}
}
