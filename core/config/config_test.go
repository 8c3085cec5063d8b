package config

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func testParams() []Param {
	return []Param{
		{Key: "controller.listen", Kind: String, Default: ":7000", Help: "address to listen on"},
		{Key: "controller.timeout", Kind: Duration, Default: 30 * time.Second, Help: "RPC timeout"},
		{Key: "controller.max_vms", Kind: Int, Default: 100, Help: "VM limit"},
		{Key: "controller.debug", Kind: Bool, Help: "debug logging"},
		{Key: "controller.ratio", Kind: Float, Default: 1.5, Help: "overcommit ratio"},
		{Key: "controller.peers", Kind: Strings, Default: []string{"a", "b"}, Help: "peer list"},
		{Key: "controller.state_dir", Kind: String, Default: "/var/lib/usher", Help: "state directory"},
		{Key: "controller.password", Kind: String, Help: "admin password"},
		{Key: "lnm.libvirt_socket", Kind: String, Default: "/run/libvirt/libvirt-sock", Help: "libvirt socket"},
		{Key: "lnm.cert_file", Kind: String, Help: "TLS certificate"},
		{Key: "policy.config", Kind: Map, Help: "per-script policy configuration"},
		{Key: "name", Kind: String, Default: "usher", Help: "cluster name"},
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	s := New(testParams()...)
	if got := s.String("controller.listen"); got != ":7000" {
		t.Errorf("listen = %q", got)
	}
	if got := s.Duration("controller.timeout"); got != 30*time.Second {
		t.Errorf("timeout = %v", got)
	}
	if got := s.Int("controller.max_vms"); got != 100 {
		t.Errorf("max_vms = %v", got)
	}
	if s.Bool("controller.debug") {
		t.Error("debug default true")
	}
	if got := s.Float("controller.ratio"); got != 1.5 {
		t.Errorf("ratio = %v", got)
	}
	if got := s.Strings("controller.peers"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("peers = %v", got)
	}
	if got := s.Map("policy.config"); got == nil || len(got) != 0 {
		t.Errorf("policy.config = %#v", got)
	}
	if src := s.Source("controller.listen"); src != "default" {
		t.Errorf("source = %q", src)
	}
	// Getters return copies.
	s.Strings("controller.peers")[0] = "zzz"
	if s.Strings("controller.peers")[0] != "a" {
		t.Error("Strings returned shared slice")
	}
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: no panic", name)
		}
	}()
	f()
}

func TestProgrammerErrorsPanic(t *testing.T) {
	mustPanic(t, "duplicate", func() {
		New(Param{Key: "a.b", Kind: String}, Param{Key: "a.b", Kind: Int})
	})
	mustPanic(t, "wrong default", func() { New(Param{Key: "a.b", Kind: Int, Default: "5"}) })
	mustPanic(t, "int as duration", func() { New(Param{Key: "a.b", Kind: Duration, Default: 5}) })
	mustPanic(t, "bad key", func() { New(Param{Key: "a..b", Kind: Int}) })
	mustPanic(t, "table conflict", func() { New(Param{Key: "a", Kind: Int}, Param{Key: "a.b", Kind: Int}) })
	s := New(testParams()...)
	mustPanic(t, "unknown getter", func() { s.String("nope") })
	mustPanic(t, "wrong kind getter", func() { s.Int("controller.listen") })
	mustPanic(t, "Add duplicate", func() { s.Add(Param{Key: "name", Kind: String}) })
	s.Add(Param{Key: "extra.x", Kind: Int, Default: int64(3)})
	if s.Int("extra.x") != 3 {
		t.Error("Add")
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	etc := writeFile(t, dir, "etc/usher.toml", `
[controller]
listen = ":1000"
max_vms = 1
timeout = "1s"
debug = true
`)
	home := writeFile(t, dir, "home/usher.toml", `
[controller]
listen = ":2000"
max_vms = 2
`)
	env := writeFile(t, dir, "env/usher.toml", `
controller.listen = ":3000"
`)
	t.Setenv("USHER_CONFIG", env)
	s := New(testParams()...)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	s.BindFlags(fs, "controller.listen", "controller.debug", "lnm.libvirt_socket")
	if err := fs.Parse([]string{"--listen", ":4000"}); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope", "usher.toml")
	if err := s.LoadFiles(etc, missing, home, env); err != nil {
		t.Fatal(err)
	}
	check := func(key, want, wantSrc string) {
		t.Helper()
		got := formatValue(s.Value(key))
		if got != want || s.Source(key) != wantSrc {
			t.Errorf("%s = %s from %q, want %s from %q", key, got, s.Source(key), want, wantSrc)
		}
	}
	check("controller.listen", `":3000"`, env)
	check("controller.max_vms", "2", home)
	check("controller.timeout", `"1s"`, etc)
	check("controller.debug", "true", etc)
	check("controller.ratio", "1.5", "default")
	if err := s.ApplyFlags(fs); err != nil {
		t.Fatal(err)
	}
	check("controller.listen", `":4000"`, "flag --listen")
	check("controller.debug", "true", etc) // flag not given: file value stays
	// Flags win even over files loaded afterwards.
	if err := s.LoadFiles(env); err != nil {
		t.Fatal(err)
	}
	check("controller.listen", `":4000"`, "flag --listen")
	if got := s.Files(); len(got) != 4 || got[0] != etc || got[3] != env {
		t.Errorf("Files = %v", got)
	}
}

func TestMissingFiles(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.toml")
	t.Setenv("USHER_CONFIG", "")
	s := New(testParams()...)
	if err := s.LoadFiles(missing); err != nil {
		t.Errorf("missing default file: %v", err)
	}
	if err := s.LoadFile(missing); err == nil {
		t.Error("LoadFile of missing file: no error")
	}
	t.Setenv("USHER_CONFIG", missing)
	err := s.LoadFiles(DefaultPaths()...)
	if err == nil || !strings.Contains(err.Error(), "USHER_CONFIG") || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing $USHER_CONFIG: %v", err)
	}
}

func TestDefaultPaths(t *testing.T) {
	t.Setenv("USHER_CONFIG", "/x/y.toml")
	t.Setenv("HOME", "/home/u")
	t.Setenv("XDG_CONFIG_HOME", "")
	p := DefaultPaths()
	ucd, _ := os.UserConfigDir()
	want := []string{"/etc/usher/usher.toml", filepath.Join(ucd, "usher", "usher.toml"), "/x/y.toml"}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("DefaultPaths = %v, want %v", p, want)
	}
	t.Setenv("USHER_CONFIG", "")
	if p := DefaultPaths(); len(p) != 2 {
		t.Errorf("without USHER_CONFIG: %v", p)
	}
}

func TestUnknownKey(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ content, key, suggest string }{
		{"[controller]\nlistn = \":1\"\n", "controller.listn", "controller.listen"},
		{"[controler]\nlisten = \":1\"\n", "controler.listen", "controller.listen"},
		{"listen = \":1\"\n", "listen", "controller.listen"},
		{"[lnm]\nlibvirt-socket = \"x\"\n", "lnm.libvirt-socket", "lnm.libvirt_socket"},
		{"[bogus]\nzzzzzzzzzzzz = 1\n", "bogus.zzzzzzzzzzzz", ""},
	}
	for _, c := range cases {
		p := writeFile(t, dir, "u.toml", c.content)
		s := New(testParams()...)
		err := s.LoadFile(p)
		if err == nil {
			t.Errorf("%q: no error", c.content)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, p) || !strings.Contains(msg, `unknown key "`+c.key+`"`) {
			t.Errorf("%q: error %q lacks file or key", c.content, msg)
		}
		if c.suggest != "" && !strings.Contains(msg, `did you mean "`+c.suggest+`"`) {
			t.Errorf("%q: error %q lacks suggestion %q", c.content, msg, c.suggest)
		}
		if c.suggest == "" && strings.Contains(msg, "did you mean") {
			t.Errorf("%q: unexpected suggestion in %q", c.content, msg)
		}
		// Nothing from a bad file is applied.
		if s.String("controller.listen") != ":7000" {
			t.Errorf("%q: partial load", c.content)
		}
	}
}

func TestTypeErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ content, key, expect string }{
		{"[controller]\nmax_vms = \"ten\"\n", "controller.max_vms", "integer"},
		{"[controller]\ntimeout = 30\n", "controller.timeout", "duration"},
		{"[controller]\ntimeout = \"soon\"\n", "controller.timeout", "duration"},
		{"[controller]\ndebug = \"yes\"\n", "controller.debug", "boolean"},
		{"[controller]\npeers = \"a,b\"\n", "controller.peers", "list of strings"},
		{"[controller]\npeers = [1, 2]\n", "controller.peers", "list of strings"},
		{"[controller]\nlisten = 7000\n", "controller.listen", "string"},
		{"[controller]\nratio = true\n", "controller.ratio", "number"},
		{"[controller.listen]\nx = 1\n", "controller.listen", "string"},
		{"[policy]\nconfig = 5\n", "policy.config", "table"},
	}
	for _, c := range cases {
		p := writeFile(t, dir, "bad.toml", c.content)
		s := New(testParams()...)
		err := s.LoadFile(p)
		if err == nil {
			t.Errorf("%q: no error", c.content)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, p) || !strings.Contains(msg, `"`+c.key+`"`) || !strings.Contains(msg, c.expect) {
			t.Errorf("%q: error %q should name file, key %q and %q", c.content, msg, c.key, c.expect)
		}
	}
	// Syntax errors name the file too.
	p := writeFile(t, dir, "syntax.toml", "[controller\n")
	if err := New(testParams()...).LoadFile(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("syntax error: %v", err)
	}
	// Ints are accepted for floats.
	p = writeFile(t, dir, "ok.toml", "[controller]\nratio = 2\n")
	s := New(testParams()...)
	if err := s.LoadFile(p); err != nil || s.Float("controller.ratio") != 2 {
		t.Errorf("int for float: %v %v", err, s.Float("controller.ratio"))
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "conf/usher.toml", `
[controller]
state_dir = "state"
listen = "relative/not/a/path"
[lnm]
cert_file = "../certs/lnm.pem"
libvirt_socket = "sock"
`)
	s := New(testParams()...)
	if err := s.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if got, want := s.String("controller.state_dir"), filepath.Join(dir, "conf", "state"); got != want {
		t.Errorf("state_dir = %q, want %q", got, want)
	}
	if got, want := s.String("lnm.cert_file"), filepath.Join(dir, "certs", "lnm.pem"); got != want {
		t.Errorf("cert_file = %q, want %q", got, want)
	}
	if got := s.String("controller.listen"); got != "relative/not/a/path" {
		t.Errorf("listen resolved: %q", got)
	}
	if got := s.String("lnm.libvirt_socket"); got != "sock" {
		t.Errorf("libvirt_socket resolved: %q", got)
	}
	// Absolute paths stay.
	p = writeFile(t, dir, "abs.toml", "[controller]\nstate_dir = \"/srv/usher\"\n")
	if err := s.LoadFile(p); err != nil || s.String("controller.state_dir") != "/srv/usher" {
		t.Errorf("absolute: %v %q", err, s.String("controller.state_dir"))
	}
	for key, want := range map[string]bool{"a.file": true, "a.dir": true, "a.path": true, "a.log_file": true,
		"a.x_dir": true, "a.search_path": true, "a.profile": false, "a.dirs": false, "a.listen": false} {
		if IsPathKey(key) != want {
			t.Errorf("IsPathKey(%q) = %v", key, !want)
		}
	}
}

func TestMapMerging(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.toml", `
[policy.config.quota]
max_vms = 5
max_cpus = 8
[policy.config.placement]
spread = true
`)
	b := writeFile(t, dir, "b.toml", `
[policy.config.quota]
max_vms = 10
[policy.config.fairshare]
weights = ["a", "b"]
`)
	params := append(testParams()[:10], Param{Key: "policy.config", Kind: Map,
		Default: map[string]any{"quota": map[string]any{"max_mem": 64}}})
	s := New(params...)
	if err := s.LoadFiles(a, b); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"quota":     map[string]any{"max_vms": int64(10), "max_cpus": int64(8), "max_mem": int64(64)},
		"placement": map[string]any{"spread": true},
		"fairshare": map[string]any{"weights": []any{"a", "b"}},
	}
	got := s.Map("policy.config")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Map = %#v\nwant %#v", got, want)
	}
	if src := s.Source("policy.config"); src != a+", "+b {
		t.Errorf("source = %q", src)
	}
	got["quota"].(map[string]any)["max_vms"] = int64(99)
	if s.Map("policy.config")["quota"].(map[string]any)["max_vms"] != int64(10) {
		t.Error("Map returned shared map")
	}
	// Flags merge too.
	if err := s.Set("policy.config", "quota.max_vms = 3", "flag --config"); err != nil {
		t.Fatal(err)
	}
	q := s.Map("policy.config")["quota"].(map[string]any)
	if q["max_vms"] != int64(3) || q["max_cpus"] != int64(8) {
		t.Errorf("after flag: %v", q)
	}
	if err := s.Set("policy.config", "{placement = {spread = false}}", "flag --config"); err != nil {
		t.Fatal(err)
	}
	if s.Map("policy.config")["placement"].(map[string]any)["spread"] != false {
		t.Error("inline-table Set")
	}
	if s.Source("policy.config") != "flag --config" {
		t.Errorf("source = %q", s.Source("policy.config"))
	}
}

func TestSetText(t *testing.T) {
	s := New(testParams()...)
	for _, c := range []struct{ key, val string }{
		{"controller.timeout", "5s"}, {"controller.max_vms", "7"}, {"controller.debug", "true"},
		{"controller.ratio", "0.25"}, {"controller.peers", "x, y,,z"},
	} {
		if err := s.Set(c.key, c.val, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if s.Duration("controller.timeout") != 5*time.Second || s.Int("controller.max_vms") != 7 ||
		!s.Bool("controller.debug") || s.Float("controller.ratio") != 0.25 ||
		!reflect.DeepEqual(s.Strings("controller.peers"), []string{"x", "y", "z"}) {
		t.Error("Set values wrong")
	}
	if s.Source("controller.timeout") != "test" {
		t.Error("Set source")
	}
	if err := s.Set("controller.timeout", "5", "test"); err == nil || !strings.Contains(err.Error(), "duration") {
		t.Errorf("bad duration: %v", err)
	}
	if err := s.Set("controller.listn", "x", "test"); err == nil || !strings.Contains(err.Error(), "controller.listen") {
		t.Errorf("unknown key: %v", err)
	}
}

func TestFlags(t *testing.T) {
	s := New(testParams()...)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.BindFlags(fs, "controller.", "lnm.libvirt_socket")
	for _, name := range []string{"listen", "timeout", "max-vms", "debug", "peers", "state-dir", "libvirt-socket"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s not bound", name)
		}
	}
	if got := fs.Lookup("timeout").Usage; got != "RPC timeout (default 30s)" {
		t.Errorf("usage = %q", got)
	}
	if got := fs.Lookup("libvirt-socket").Usage; got != "libvirt socket (default /run/libvirt/libvirt-sock)" {
		t.Errorf("usage = %q", got)
	}
	if got := fs.Lookup("debug").Usage; got != "debug logging" {
		t.Errorf("usage = %q", got)
	}
	if FlagName("lnm.libvirt_socket") != "libvirt-socket" || FlagName("name") != "name" || FlagName("a.b.c_d") != "b-c-d" {
		t.Error("FlagName")
	}
	err := fs.Parse([]string{"--debug", "--timeout=2m", "--peers", "p1,p2", "--peers", "p3", "--libvirt-socket", "/s"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyFlags(fs); err != nil {
		t.Fatal(err)
	}
	if !s.Bool("controller.debug") || s.Source("controller.debug") != "flag --debug" {
		t.Error("--debug")
	}
	if s.Duration("controller.timeout") != 2*time.Minute {
		t.Error("--timeout")
	}
	if !reflect.DeepEqual(s.Strings("controller.peers"), []string{"p1", "p2", "p3"}) {
		t.Errorf("--peers = %v", s.Strings("controller.peers"))
	}
	if s.String("lnm.libvirt_socket") != "/s" || s.Source("lnm.libvirt_socket") != "flag --libvirt-socket" {
		t.Error("--libvirt-socket")
	}
	if s.Source("controller.listen") != "default" {
		t.Error("unset flag applied")
	}
	// Bad values fail at Parse time.
	fs2 := flag.NewFlagSet("test", flag.ContinueOnError)
	fs2.SetOutput(io.Discard)
	s.BindFlags(fs2, "controller.timeout")
	if err := fs2.Parse([]string{"--timeout", "forever"}); err == nil {
		t.Error("bad flag value accepted")
	}
	mustPanic(t, "rebind", func() { s.BindFlags(fs2, "controller.timeout") })
	mustPanic(t, "unknown", func() { s.BindFlags(fs2, "controller.nope") })
	// PrintDefaults shows the default once.
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	fs.PrintDefaults()
	if n := strings.Count(buf.String(), "(default 30s)"); n != 1 {
		t.Errorf("PrintDefaults shows default %d times:\n%s", n, buf.String())
	}
}

func TestEnv(t *testing.T) {
	s := New(testParams()...)
	t.Setenv("USHER_CONTROLLER_MAX_VMS", "42")
	if EnvName("USHER_", "lnm.libvirt_socket") != "USHER_LNM_LIBVIRT_SOCKET" {
		t.Error("EnvName")
	}
	if err := s.LoadEnv("USHER_"); err != nil {
		t.Fatal(err)
	}
	if s.Int("controller.max_vms") != 42 || s.Source("controller.max_vms") != "env USHER_CONTROLLER_MAX_VMS" {
		t.Errorf("env: %d %q", s.Int("controller.max_vms"), s.Source("controller.max_vms"))
	}
}

func TestShow(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "usher.toml", `
name = "prod"
[controller]
listen = ":9000"
password = "hunter2"
[policy.config.quota]
max_vms = 5
admin_secret = "s3"
`)
	s := New(testParams()...)
	if err := s.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s.Show(&buf, "")
	out := buf.String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(testParams()) {
		t.Fatalf("Show printed %d lines:\n%s", len(lines), out)
	}
	if strings.Contains(out, "hunter2") || strings.Contains(out, "s3") {
		t.Errorf("secret leaked:\n%s", out)
	}
	col := strings.Index(lines[0], "   # ")
	for i, l := range lines {
		if i > 0 && l < lines[i-1] {
			t.Errorf("not sorted: %q after %q", l, lines[i-1])
		}
		if len(l) < 90 && strings.Index(l, "   # ") != col {
			t.Errorf("source column not aligned: %q", l)
		}
	}
	norm := func(l string) string { return strings.Join(strings.Fields(l), " ") }
	for _, want := range []string{
		`controller.listen = ":9000" # ` + p,
		`controller.password = <redacted> # ` + p,
		`controller.timeout = "30s" # default`,
		`controller.max_vms = 100 # default`,
		`controller.debug = false # default`,
		`controller.ratio = 1.5 # default`,
		`controller.peers = ["a", "b"] # default`,
		`lnm.cert_file = "" # default`,
		`name = "prod" # ` + p,
		`policy.config = {quota = {admin_secret = <redacted>, max_vms = 5}} # ` + p,
	} {
		found := false
		for _, l := range lines {
			if norm(l) == want {
				found = true
			}
		}
		if !found {
			t.Errorf("Show lacks line %q:\n%s", want, out)
		}
	}
	buf.Reset()
	s.Show(&buf, "lnm.")
	if got := strings.Count(buf.String(), "\n"); got != 2 || !strings.HasPrefix(buf.String(), "lnm.cert_file") {
		t.Errorf("Show(lnm.):\n%s", buf.String())
	}
}

func TestWriteTOMLRoundTrip(t *testing.T) {
	values := map[string]any{
		"controller.listen":   "host:1 \"quoted\"\n\ttab \\ é \x01",
		"controller.timeout":  90 * time.Second,
		"controller.max_vms":  12,
		"controller.debug":    true,
		"controller.ratio":    3.0,
		"controller.peers":    []string{"x", "y,z"},
		"controller.password": "pw",
		"lnm.cert_file":       "/abs/cert.pem",
		"name":                "demo",
		"policy.config": map[string]any{
			"quota":    map[string]any{"max_vms": 5, "weird key": "v"},
			"list":     []any{int64(1), "two", map[string]any{"x": 1.0}},
			"when":     "2024",
			"sub.dots": true,
		},
	}
	s := New(testParams()...)
	var buf bytes.Buffer
	if err := s.WriteTOML(&buf, values); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, t.TempDir(), "client.toml", buf.String())
	r := New(testParams()...)
	if err := r.LoadFile(p); err != nil {
		t.Fatalf("reload: %v\n%s", err, buf.String())
	}
	for key, v := range values {
		want, _ := coerce(r.mustParam(key).Kind, v, false)
		if got := r.Value(key); !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", key, got, want)
		}
		if r.Source(key) != p {
			t.Errorf("%s source %q", key, r.Source(key))
		}
	}
	if err := s.WriteTOML(io.Discard, map[string]any{"controller.lisen": "x"}); err == nil || !strings.Contains(err.Error(), "controller.listen") {
		t.Errorf("unknown key: %v", err)
	}
	if err := s.WriteTOML(io.Discard, map[string]any{"controller.max_vms": "x"}); err == nil {
		t.Error("wrong type accepted")
	}
}

func (s *Set) mustParam(key string) Param {
	p, ok := s.Lookup(key)
	if !ok {
		panic(key)
	}
	return p
}

func TestConcurrentReads(t *testing.T) {
	s := New(testParams()...)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				_ = s.String("controller.listen")
				_ = s.Map("policy.config")
				s.Show(io.Discard, "")
			}
		}()
	}
	for j := 0; j < 50; j++ {
		_ = s.Set("controller.max_vms", "5", "test")
		_ = s.Set("policy.config", "a.b = 1", "test")
	}
	wg.Wait()
}
