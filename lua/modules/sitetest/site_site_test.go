//go:build site

package sitetest

// Site integration tests: the shipped UCSD policies against a real slapd,
// a real named (TSIG-signed RFC 2136 updates) and SQLite files, checked
// with the servers' own tools (ldapsearch, dig) and SQL.
//
//	go test -race -tags site ./lua/...

import (
	"context"
	stdsql "database/sql"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/dns"
	"github.com/usher-vm/usher/lua/modules/fs"
	"github.com/usher-vm/usher/lua/modules/ldap"
	"github.com/usher-vm/usher/lua/modules/sql"
	"github.com/usher-vm/usher/lua/policytool"
)

// repoRoot is the repository, from lua/modules/sitetest.
const repoRoot = "../../.."

// scriptsDir is the shipped policies.
const scriptsDir = repoRoot + "/scripts"

// siteHost runs the shipped scripts named in enable with the given
// modules (closed with the host) and module call timeout (0: the default).
func siteHost(t *testing.T, mods []lua.Module, timeout time.Duration, enable []string, cfg map[string]map[string]any, view *policytool.FixtureView) *lua.Host {
	t.Helper()
	var logw io.Writer = io.Discard
	if testing.Verbose() {
		logw = os.Stderr
	}
	h, err := lua.New(lua.Options{Dirs: []string{scriptsDir}, Enabled: enable, Config: cfg,
		Modules: mods, ModuleTimeout: timeout, PoolSize: 2, Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if view == nil {
		view = policytool.NewFixtureView()
	}
	h.Bind(view, nil)
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h
}

// ldapModule is the ldap module with the real client.
func ldapModule(t *testing.T, c ldap.Config, timeout time.Duration) lua.Module {
	t.Helper()
	cl, err := ldap.NewClient(c, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return ldap.New(cl)
}

// dnsModule is the dns module with the real client.
func dnsModule(t *testing.T, c dns.Config) lua.Module {
	t.Helper()
	cl, err := dns.NewClient(c, lua.DefaultModuleTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return dns.New(cl)
}

// outVM is a VM the chain kept, as the decision has it.
type outVM struct {
	Name, Short  string
	LNM, Target  string
	MemMB, VCPUs int
	Data         api.StringMap
}

// keptVMs lists the VMs of req that d keeps, in order.
func keptVMs(req *core.Request, d *core.Decision) []outVM {
	var out []outVM
	for i, v := range req.VMs {
		c := d.VMs[i]
		if c.Dropped {
			continue
		}
		out = append(out, outVM{Name: v.Name, Short: v.Short, LNM: c.LNM, Target: c.Target, MemMB: c.MemMB, VCPUs: c.VCPUs, Data: c.Data})
	}
	return out
}

func TestSiteLDAPAuth(t *testing.T) {
	s := startSlapd(t)
	s.addUser(t, "alice", "alicepw", 2001)
	s.addUser(t, "bob", "bobpw", 2002)
	s.add(t, "dn: cn=usher-admins,ou=groups,"+s.Base+"\nobjectClass: posixGroup\ncn: usher-admins\ngidNumber: 3000\nmemberUid: bob\n")
	lc := ldap.Config{Servers: []string{s.URL}, PlainLoopback: true}
	h := siteHost(t, []lua.Module{ldapModule(t, lc, 2*time.Second)}, 2*time.Second, []string{"auth_ldap"}, map[string]map[string]any{"auth_ldap": {
		"url": s.URL, "base": "ou=people," + s.Base, "group_base": "ou=groups," + s.Base}}, nil)
	ctx := context.Background()
	auth := func(u, p string) (api.Identity, error) {
		return h.Authenticate(ctx, core.Credentials{User: u, Password: p, Remote: "test"})
	}
	t0 := time.Now()
	id, err := auth("alice", "alicepw")
	if err != nil || id.User != "alice" || id.Admin {
		t.Fatalf("alice: %+v %v", id, err)
	}
	t.Logf("first LDAP login (dial, search, bind) took %v", time.Since(t0))
	if id, err := auth("bob", "bobpw"); err != nil || !id.Admin || len(id.Groups) != 1 {
		t.Fatalf("bob: %+v %v", id, err)
	}
	for _, c := range [][2]string{
		{"alice", "wrong"}, {"alice", ""}, {"nobody", "x"},
		{"*)(uid=*", "alicepw"}, {"alice)(uid=*", "alicepw"}, {"*", "alicepw"}, {"al*", "alicepw"},
		{"alice\x00", "alicepw"}, {"*)(|(uid=*", "bobpw"},
	} {
		if id, err := auth(c[0], c[1]); err == nil {
			t.Errorf("login %q/%q accepted as %+v", c[0], c[1], id)
		}
	}
	// An empty password is never a bind, even for an entry without one:
	// slapd would treat it as an unauthenticated (successful) bind.
	s.add(t, "dn: uid=nopw,ou=people,"+s.Base+"\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: nopw\ncn: n\nsn: n\nuidNumber: 9\ngidNumber: 9\nhomeDirectory: /x\n")
	if _, err := auth("nopw", ""); err == nil {
		t.Error("empty password accepted")
	}
	// Without plain_loopback the module insists on StartTLS, which this
	// slapd (no certificate) cannot do: the login fails closed.
	strict := siteHost(t, []lua.Module{ldapModule(t, ldap.Config{Servers: []string{s.URL}}, lua.DefaultModuleTimeout)}, 0, []string{"auth_ldap"},
		map[string]map[string]any{"auth_ldap": {"url": s.URL, "base": "ou=people," + s.Base}}, nil)
	if id, err := strict.Authenticate(ctx, core.Credentials{User: "alice", Password: "alicepw"}); err == nil {
		t.Fatalf("accepted over plain LDAP without StartTLS: %+v", id)
	}
	// The server goes away: logins fail closed, quickly.
	s.stop()
	t0 = time.Now()
	if id, err := auth("alice", "alicepw"); err == nil {
		t.Fatalf("accepted with LDAP down: %+v", id)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("failing closed took %v", d)
	}
}

func TestSiteLDAPCluster(t *testing.T) {
	s := startSlapd(t)
	s.addUser(t, "alice", "alicepw", 2001)
	lc := ldap.Config{Servers: []string{s.URL}, PlainLoopback: true,
		Binds: map[string]ldap.Bind{"admin": {DN: s.RootDN, Password: s.RootPW}}}
	view := policytool.NewFixtureView()
	h := siteHost(t, []lua.Module{ldapModule(t, lc, lua.DefaultModuleTimeout)}, 0, []string{"ldap_cluster"}, map[string]map[string]any{"ldap_cluster": {
		"url": s.URL, "bind": "admin", "base": s.Base, "required": true}}, view)
	req := &core.Request{ID: "r1", Kind: core.KindStart, User: api.Identity{User: "alice"}, Cluster: "web",
		VMs: []core.ReqVM{{Name: "web1.alice.usher.test", Short: "web1", Owner: "alice", Cluster: "web", MemMB: 512, VCPUs: 1}}}
	vm := &req.VMs[0]
	d := core.NewDecision(req)
	d.VMs[0].LNM = "n1"
	if err := h.RegisterVM(context.Background(), req, d, 0); err != nil {
		t.Fatal(err)
	}
	branch := "ou=web-alice,ou=clusters," + s.Base
	if d.VMs[0].Data["ldap_branch"] != branch {
		t.Fatalf("data %v", d.VMs[0].Data)
	}
	out := s.search(t, branch, "(objectClass=*)", "objectClass", "member", "aliasedObjectName")
	for _, want := range []string{"dn: " + branch, "dn: uid=alice," + branch, "aliasedObjectName: uid=alice,ou=people," + s.Base,
		"dn: cn=admin," + branch, "member: uid=alice,ou=people," + s.Base} {
		if !strings.Contains(out, want) {
			t.Errorf("ldapsearch lacks %q:\n%s", want, out)
		}
	}
	// The alias resolves: searching the branch with -a always finds alice's entry.
	// The last VM of the cluster goes: the branch goes.
	v := &api.VM{Name: vm.Name, Short: "web1", Owner: "alice", Cluster: "web", LNM: "n1", State: api.StateDestroyed}
	h.Notify(api.Event{Type: api.EvOpComplete, VM: v, OK: true, Detail: map[string]string{"op": "destroy"}, Time: time.Now()})
	waitfor.True(t, 10*time.Second, "branch removed", func() bool {
		return !strings.Contains(s.search(t, "ou=clusters,"+s.Base, "(ou=web-alice)", "ou"), "web-alice")
	})
}

func TestSiteDNS(t *testing.T) {
	n := startNamed(t)
	dc := dns.Config{Servers: []string{n.Addr},
		Keys: map[string]dns.TSIGKey{n.KeyName: {Algorithm: "hmac-sha256", Secret: n.Secret}, "wrong-key.": {Secret: "d3Jvbmcgc2VjcmV0IGtleSAxMjM0NTY3ODkwMTIzNDU2"}}}
	cfg := map[string]any{"server": n.Addr, "key": n.KeyName, "zone": n.Zone, "reverse_zone": n.RevZone}
	view := policytool.NewFixtureView()
	h := siteHost(t, []lua.Module{dnsModule(t, dc)}, 0, []string{"dns"}, map[string]map[string]any{"dns": cfg}, view)
	ctx := context.Background()
	// reg runs register_vm for a new VM placed on n1 whose data (as
	// start_request left it) holds its address; it returns the VM as
	// register_vm left it.
	reg := func(h *lua.Host, short, ip string, alias bool) (outVM, error) {
		req := &core.Request{ID: "r", Kind: core.KindStart, User: api.Identity{User: "alice"}, Cluster: "web",
			VMs: []core.ReqVM{{Name: short + ".alice." + n.Zone, Short: short, Owner: "alice", Cluster: "web", MemMB: 512, VCPUs: 1}}}
		if alias {
			req.Args = map[string]string{"dns_alias": "yes"}
		}
		d := core.NewDecision(req)
		d.VMs[0].LNM, d.VMs[0].Data = "n1", map[string]string{"ip": ip}
		err := h.RegisterVM(ctx, req, d, 0)
		return keptVMs(req, d)[0], err
	}
	t0 := time.Now()
	vm1, err := reg(h, "web1", "10.1.0.7", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("register_vm with two TSIG-signed updates took %v", time.Since(t0))
	if _, err := reg(h, "web2", "10.1.0.8", true); err != nil {
		t.Fatal(err)
	}
	if got := n.dig(t, "web1.alice."+n.Zone, "A"); got != "10.1.0.7" {
		t.Fatalf("dig A: %q", got)
	}
	if got := n.dig(t, "7.0.1.10.in-addr.arpa", "PTR"); got != "web1.alice."+n.Zone+"." {
		t.Fatalf("dig PTR: %q", got)
	}
	if got := strings.Fields(n.dig(t, "web.alice."+n.Zone, "A")); len(got) != 2 {
		t.Fatalf("round-robin alias: %q", got)
	}
	// destroy web1: its names go, the alias keeps web2's address
	v := &api.VM{Name: vm1.Name, Short: "web1", Owner: "alice", Cluster: "web", State: api.StateDestroyed, Data: vm1.Data}
	h.Notify(api.Event{Type: api.EvOpComplete, VM: v, OK: true, Detail: map[string]string{"op": "destroy"}, Time: time.Now()})
	waitfor.True(t, 10*time.Second, "records removed", func() bool {
		return n.dig(t, "web1.alice."+n.Zone, "A") == "" && n.dig(t, "7.0.1.10.in-addr.arpa", "PTR") == "" &&
			n.dig(t, "web.alice."+n.Zone, "A") == "10.1.0.8"
	})
	// a wrong TSIG key: named refuses, the VM is not registered, and the
	// error names the refusal
	bad := map[string]any{}
	for k, v := range cfg {
		bad[k] = v
	}
	bad["key"] = "wrong-key."
	h2 := siteHost(t, []lua.Module{dnsModule(t, dc)}, 0, []string{"dns"}, map[string]map[string]any{"dns": bad}, view)
	_, err = reg(h2, "web3", "10.1.0.9", false)
	if err == nil || !strings.Contains(err.Error(), "NOTAUTH") {
		t.Fatalf("wrong key: %v", err)
	}
	t.Logf("wrong key reported as: %v", err)
	// the right key name with a wrong secret: BADSIG
	dc2 := dns.Config{Servers: []string{n.Addr},
		Keys: map[string]dns.TSIGKey{n.KeyName: {Secret: "d3Jvbmcgc2VjcmV0IGtleSAxMjM0NTY3ODkwMTIzNDU2"}}}
	h3 := siteHost(t, []lua.Module{dnsModule(t, dc2)}, 0, []string{"dns"}, map[string]map[string]any{"dns": cfg}, view)
	_, err = reg(h3, "web4", "10.1.0.10", false)
	if err == nil || !strings.Contains(err.Error(), "NOTAUTH") {
		t.Fatalf("wrong secret: %v", err)
	}
	t.Logf("wrong secret reported as: %v", err)
	for _, name := range []string{"web3", "web4"} {
		if got := n.dig(t, name+".alice."+n.Zone, "A"); got != "" {
			t.Fatalf("record added with a wrong key: %q", got)
		}
	}
}

func TestSiteNFSAndAudit(t *testing.T) {
	root := t.TempDir()
	dbPath := filepath.Join(t.TempDir(), "site.db")
	roots, err := fs.NewRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	sdb, driver, err := sql.OpenDB(sql.Config{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	view := policytool.NewFixtureView()
	h := siteHost(t, []lua.Module{fs.New(roots), sql.New(sdb, driver)}, 0, []string{"nfs_dirs", "audit_sql", "ipam_sql"}, map[string]map[string]any{
		"nfs_dirs": {"root": root, "owner": "1234", "group": "4321", "mode": "2770"},
		"ipam_sql": {"ranges": []any{map[string]any{"name": "lab", "subnet": "10.1.0.0/24", "first": "10.1.0.10", "last": "10.1.0.20"}}},
	}, view)
	ctx := context.Background()
	req := &core.Request{ID: "r1", Kind: core.KindStart, User: api.Identity{User: "alice"}, Cluster: "web",
		VMs: []core.ReqVM{{Name: "web1.alice.usher.test", Short: "web1", Owner: "alice", Cluster: "web", MemMB: 512, VCPUs: 1}}}
	d := core.NewDecision(req)
	d.VMs[0].LNM = "n1" // as placement would have
	if err := h.Request(ctx, api.EvStartRequest, req, d); err != nil {
		t.Fatal(err)
	}
	if d.VMs[0].Data["ip"] != "10.1.0.10" {
		t.Fatalf("ipam: %v", d.VMs[0].Data)
	}
	if err := h.RegisterVM(ctx, req, d, 0); err != nil {
		t.Fatal(err)
	}
	vm := keptVMs(req, d)[0]
	local := filepath.Join(root, "vms", "alice", "web1")
	for _, d := range []string{filepath.Join(root, "global", "etc", "init.d"), filepath.Join(root, "clusters", "alice", "web", "etc", "rc3.d"), filepath.Join(local, "etc", "rc5.d")} {
		fi, err := os.Lstat(d)
		if err != nil || !fi.IsDir() {
			t.Fatalf("%s: %v", d, err)
		}
	}
	fi, _ := os.Lstat(local)
	st := fi.Sys().(*syscall.Stat_t)
	if fs.Perm(fi.Mode()) != 0o2770 || (os.Geteuid() == 0 && (st.Uid != 1234 || st.Gid != 4321)) {
		t.Fatalf("%s: mode %o owner %d:%d", local, fs.Perm(fi.Mode()), st.Uid, st.Gid)
	}
	cl := &api.VM{Name: vm.Name, Short: "web1", Owner: "alice", Cluster: "web", LNM: "n1", State: api.StateRunning, Data: vm.Data}
	view.AddVM(cl)
	h.Notify(api.Event{Type: api.EvStartComplete, VM: cl, OK: true, LNM: "n1", Req: "r1", Time: time.Now()})
	h.Notify(api.Event{Type: api.EvStateChanged, VM: cl, LNM: "n1", Time: time.Now()})
	db, err := stdsql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	query := func(q string, args ...any) string {
		var s string
		if err := db.QueryRow(q, args...).Scan(&s); err != nil {
			return "err: " + err.Error()
		}
		return s
	}
	waitfor.True(t, 10*time.Second, "vm mirrored as running and address used", func() bool {
		return query("select state || ' ' || ip from vms where name = ?", vm.Name) == "running 10.1.0.10" &&
			query("select state from ipam_addr where vm = ?", vm.Name) == "used"
	})
	if got := query("select group_concat(stage, ',') from audit_requests where event = 'start_request' and req = 'r1'"); got != "in,out" {
		t.Errorf("audit_requests: %q", got)
	}
	// destroy: folders, mirror row and address go
	view2 := policytool.NewFixtureView()
	h.Bind(view2, nil)
	gone := cl.Clone()
	gone.State = api.StateDestroyed
	h.Notify(api.Event{Type: api.EvOpComplete, VM: gone, OK: true, Detail: map[string]string{"op": "destroy"}, Time: time.Now()})
	h.Notify(api.Event{Type: api.EvStateChanged, VM: gone, Time: time.Now()})
	waitfor.True(t, 10*time.Second, "cleanup after destroy", func() bool {
		_, e1 := os.Lstat(local)
		_, e2 := os.Lstat(filepath.Join(root, "clusters", "alice", "web"))
		return os.IsNotExist(e1) && os.IsNotExist(e2) &&
			query("select count(*) from vms") == "0" && query("select count(*) from ipam_addr") == "0" &&
			query("select count(*) from audit_events where type = 'op_complete'") == "1"
	})
	if _, err := os.Lstat(filepath.Join(root, "global")); err != nil {
		t.Fatal("global folder must stay")
	}
}
