package lua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	glua "github.com/yuin/gopher-lua"
)

// ModuleConfig switches on the site-integration modules (ldap, dns, sql, fs)
// and says what they may reach. A module whose part is empty is not
// installed: scripts see no global of that name. Secrets (LDAP service
// passwords, TSIG keys) live here, never in script config: scripts refer to
// them by name.
type ModuleConfig struct {
	// Timeout bounds one network or database call (default 5s). The wait is
	// not charged to the Lua CPU budget, but the handler's own context (the
	// request's deadline, the host shutting down) still cancels it.
	Timeout time.Duration

	// FSRoots: fs may create and remove directories only below these
	// absolute directories (never a root itself).
	FSRoots []string

	// SQLPath is an SQLite file (pure Go driver, created if missing).
	// SQLDSN, when set, is a PostgreSQL DSN (postgres://…) used instead.
	SQLPath string
	SQLDSN  string

	LDAP LDAPModuleConfig
	DNS  DNSModuleConfig

	// Fake installs in-memory stand-ins for ldap, dns and fs and an
	// in-memory SQLite database: for demos and policy fixture tests. It
	// never reaches a server. A script whose config has fake_modules = true
	// gets the fakes too, but only on a host with no module configured.
	Fake bool
}

// LDAPModuleConfig lists the LDAP servers scripts may reach.
type LDAPModuleConfig struct {
	// Servers: allowed URLs, e.g. "ldaps://ldap.example.org" or
	// "ldap://ldap.example.org" (then StartTLS is required).
	Servers []string
	// PlainLoopback allows ldap:// without TLS to loopback addresses
	// (127.0.0.0/8, ::1, localhost): test set-ups only.
	PlainLoopback bool
	// CAFile is a PEM bundle to verify servers with ("" = system roots).
	CAFile string
	// Binds are named service accounts: ldap.conn{url=…, bind="admin"}.
	Binds map[string]LDAPBind
	// PoolSize is the number of idle connections kept per URL and bind DN
	// (default 4).
	PoolSize int
}

// LDAPBind is a service account.
type LDAPBind struct {
	DN       string
	Password string
}

// DNSModuleConfig lists the DNS servers and TSIG keys scripts may use.
type DNSModuleConfig struct {
	Servers []string           // allowed "host:port" for updates and lookups
	Keys    map[string]TSIGKey // by key name, e.g. "usher-key."
}

// TSIGKey is one TSIG secret.
type TSIGKey struct {
	Algorithm string // hmac-sha256 (default), hmac-sha512, hmac-sha1…
	Secret    string // base64
}

func (c ModuleConfig) ldapOn() bool { return len(c.LDAP.Servers) > 0 }
func (c ModuleConfig) dnsOn() bool  { return len(c.DNS.Servers) > 0 }
func (c ModuleConfig) sqlOn() bool  { return c.SQLPath != "" || c.SQLDSN != "" }
func (c ModuleConfig) fsOn() bool   { return len(c.FSRoots) > 0 }

// Enabled reports whether any module is configured (fakes included).
func (c ModuleConfig) Enabled() bool {
	return c.Fake || c.ldapOn() || c.dnsOn() || c.sqlOn() || c.fsOn()
}

// ParseModuleConfig reads the policy.modules table of the usher
// configuration (see docs/site-integration.md):
//
//	[policy.modules]
//	timeout = "5s"
//	fs_roots = ["/srv/usher"]
//	sql_path = "/var/lib/usher/site.db"   # or sql_dsn = "postgres://…"
//	[policy.modules.ldap]
//	servers = ["ldaps://ldap.example.org"]
//	ca_file = "/etc/ssl/certs/site-ca.pem"
//	binds.admin = {dn = "cn=usher,dc=example,dc=org", password_file = "/etc/usher/ldap.pw"}
//	[policy.modules.dns]
//	servers = ["ns1.example.org:53"]
//	keys."usher-key." = {algorithm = "hmac-sha256", secret_file = "/etc/usher/tsig.key"}
func ParseModuleConfig(m map[string]any) (ModuleConfig, error) {
	var c ModuleConfig
	if len(m) == 0 {
		return c, nil
	}
	p := &cfgParser{}
	if s := p.str(m, "timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return c, fmt.Errorf("policy.modules.timeout: %v", err)
		}
		c.Timeout = d
	} else if n, ok := m["timeout"].(int64); ok {
		c.Timeout = time.Duration(n) * time.Second
	}
	c.FSRoots = p.strs(m, "fs_roots")
	c.SQLPath = p.str(m, "sql_path")
	c.SQLDSN = p.str(m, "sql_dsn")
	c.Fake = p.boolean(m, "fake")
	if l, ok := m["ldap"].(map[string]any); ok {
		c.LDAP.Servers = p.strs(l, "servers")
		c.LDAP.PlainLoopback = p.boolean(l, "plain_loopback")
		c.LDAP.CAFile = p.str(l, "ca_file")
		if n, ok := l["pool_size"].(int64); ok {
			c.LDAP.PoolSize = int(n)
		}
		if bs, ok := l["binds"].(map[string]any); ok {
			c.LDAP.Binds = map[string]LDAPBind{}
			for name, v := range bs {
				b, _ := v.(map[string]any)
				pw := p.secret(b, "password", "ldap.binds."+name)
				c.LDAP.Binds[name] = LDAPBind{DN: p.str(b, "dn"), Password: pw}
			}
		}
	}
	if d, ok := m["dns"].(map[string]any); ok {
		c.DNS.Servers = p.strs(d, "servers")
		if ks, ok := d["keys"].(map[string]any); ok {
			c.DNS.Keys = map[string]TSIGKey{}
			for name, v := range ks {
				k, _ := v.(map[string]any)
				c.DNS.Keys[name] = TSIGKey{Algorithm: p.str(k, "algorithm"), Secret: p.secret(k, "secret", "dns.keys."+name)}
			}
		}
	}
	return c, errors.Join(p.errs...)
}

type cfgParser struct{ errs []error }

func (p *cfgParser) str(m map[string]any, k string) string {
	if m == nil {
		return ""
	}
	switch v := m[k].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		p.errs = append(p.errs, fmt.Errorf("policy.modules: %s must be a string", k))
		return ""
	}
}

func (p *cfgParser) boolean(m map[string]any, k string) bool {
	b, _ := m[k].(bool)
	return b
}

func (p *cfgParser) strs(m map[string]any, k string) []string {
	switch v := m[k].(type) {
	case nil:
		return nil
	case string:
		return []string{v}
	case []string:
		return v
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			} else {
				p.errs = append(p.errs, fmt.Errorf("policy.modules: %s must list strings", k))
			}
		}
		return out
	}
	p.errs = append(p.errs, fmt.Errorf("policy.modules: %s must be a list of strings", k))
	return nil
}

// secret reads k or, failing that, the file named by k_file.
func (p *cfgParser) secret(m map[string]any, k, where string) string {
	if s := p.str(m, k); s != "" {
		return s
	}
	f := p.str(m, k+"_file")
	if f == "" {
		return ""
	}
	b, err := os.ReadFile(f)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("policy.modules.%s: %v", where, err))
		return ""
	}
	return strings.TrimSpace(string(b))
}

// modules is the per-host runtime of the integration modules.
type modules struct {
	cfg     ModuleConfig
	log     *slog.Logger
	timeout time.Duration
	ldap    ldapBackend
	dns     dnsBackend
	fs      fsBackend
	db      *sqlDB

	fakeOnce sync.Once
	fake     *fakeSet // lazily, for scripts with fake_modules = true
}

func newModules(c ModuleConfig, log *slog.Logger) (*modules, error) {
	m := &modules{cfg: c, log: log, timeout: c.Timeout}
	if m.timeout <= 0 {
		m.timeout = 5 * time.Second
	}
	var err error
	if c.Fake {
		f, err := newFakeSet()
		if err != nil {
			return nil, err
		}
		m.fake = f
		m.fakeOnce.Do(func() {})
	}
	if c.ldapOn() {
		if m.ldap, err = newLDAPClient(c.LDAP, m.timeout); err != nil {
			return nil, err
		}
	}
	if c.dnsOn() {
		if m.dns, err = newDNSClient(c.DNS, m.timeout); err != nil {
			return nil, err
		}
	}
	if c.fsOn() {
		if m.fs, err = newFSRoots(c.FSRoots); err != nil {
			return nil, err
		}
	}
	if c.sqlOn() {
		if m.db, err = openSQL(c.SQLPath, c.SQLDSN); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *modules) close() error {
	if m == nil {
		return nil
	}
	var errs []error
	if m.db != nil {
		errs = append(errs, m.db.close())
	}
	if c, ok := m.ldap.(*ldapClient); ok {
		c.close()
	}
	if m.fake != nil {
		errs = append(errs, m.fake.close())
	}
	return errors.Join(errs...)
}

// fakes returns the host's fake set, creating it on first use.
func (m *modules) fakes() *fakeSet {
	m.fakeOnce.Do(func() {
		f, err := newFakeSet()
		if err != nil {
			m.log.Error("fake modules unavailable", "err", err)
			return
		}
		m.fake = f
	})
	return m.fake
}

// installModules sets the globals ldap, dns, sql and fs of the modules
// configured for this host (or the fakes), read-only.
func (ls *lstate) installModules() {
	h := ls.v.h
	m := h.mods
	if m == nil {
		return
	}
	var (
		lb ldapBackend
		db dnsBackend
		fb fsBackend
		sb *sqlDB
	)
	lb, db, fb, sb = m.ldap, m.dns, m.fs, m.db
	useFake := m.cfg.Fake
	if !m.cfg.Enabled() && ls.v.config != nil && ls.v.config["fake_modules"] == true {
		useFake = true
	}
	if useFake {
		if f := m.fakes(); f != nil {
			f.seed(ls.v.config)
			lb, db, fb, sb = f.ldap, f.dns, f.fs, f.db
			if !m.cfg.Fake {
				h.log.Warn("script uses fake (in-memory) site modules", "script", ls.v.file)
			}
		}
	}
	L := ls.L
	g := L.G.Global
	if lb != nil {
		g.RawSetString("ldap", ls.ldapModule(lb))
		lockTable(L, g, "ldap")
	}
	if db != nil {
		g.RawSetString("dns", ls.dnsModule(db))
		lockTable(L, g, "dns")
	}
	if sb != nil {
		g.RawSetString("sql", ls.sqlModule(sb))
		lockTable(L, g, "sql")
	}
	if fb != nil {
		g.RawSetString("fs", ls.fsModule(fb))
		lockTable(L, g, "fs")
	}
}

// netCall runs f with the module timeout, cancelled with the handler's
// context, without charging the wait to the CPU budget.
func (ls *lstate) netCall(f func(ctx context.Context) error) error {
	base := ls.v.h.ctx
	if ls.call != nil && ls.call.outer != nil {
		base = ls.call.outer
	}
	ctx, cancel := context.WithTimeout(base, ls.v.h.mods.timeout)
	defer cancel()
	var err error
	ls.call.pause(func() { err = f(ctx) })
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return err
}

// pushErr returns nil, msg (and optional extra values) to Lua.
func pushErr(L *glua.LState, err error, extra ...glua.LValue) int {
	L.Push(glua.LNil)
	L.Push(glua.LString(err.Error()))
	for _, e := range extra {
		L.Push(e)
	}
	return 2 + len(extra)
}

func modTable(L *glua.LState, fns map[string]glua.LGFunction) *glua.LTable {
	t := L.NewTable()
	for k, f := range fns {
		t.RawSetString(k, L.NewFunction(f))
	}
	return t
}

// cleanAbs is filepath.Clean of an absolute path, or an error.
func cleanAbs(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	return filepath.Clean(p), nil
}
