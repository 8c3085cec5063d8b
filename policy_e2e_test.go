package usher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/site"

	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/lua"
)

type luaEnv struct {
	site     *site.Site
	host     *lua.Host
	policies string
}

// luaSite starts a site whose policies are the shipped scripts (from the
// repository's scripts/ folder) plus a watched site folder.
func luaSite(t *testing.T, lnms int, enabled []string, cfg map[string]map[string]any) *luaEnv {
	return luaSiteBudget(t, lnms, enabled, cfg, 2*time.Second)
}

// luaSiteBudget is luaSite with a given per-handler budget (the hostile
// scripts test needs the production default; the others test behaviour,
// not budgets, and must not flake on a loaded machine).
func luaSiteBudget(t *testing.T, lnms int, enabled []string, cfg map[string]map[string]any, budget time.Duration) *luaEnv {
	t.Helper()
	dir := t.TempDir()
	ht := filepath.Join(dir, "users.htpasswd")
	var lines []string
	for _, u := range [][2]string{{"alice", "alice-pw"}, {"bob", "bob-pw"}, {"root", "root-pw"}} {
		h, err := bcrypt.GenerateFromPassword([]byte(u[1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u[0]+":"+string(h))
	}
	if err := os.WriteFile(ht, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = map[string]map[string]any{}
	}
	cfg["auth_htpasswd"] = map[string]any{"file": ht, "admins": []any{"root"}}
	policies := filepath.Join(dir, "policies")
	os.MkdirAll(policies, 0o755)
	shipped, _ := filepath.Abs("scripts")
	host, err := lua.New(lua.Options{Dirs: []string{shipped, policies}, Enabled: enabled, Watch: true, Config: cfg,
		Budget: budget, MemLimitMB: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var startErr error
	s, err := site.Start(ctx, site.Options{Dir: dir, LNMs: lnms, Hooks: host,
		Bind: func(c *core.Controller) {
			host.Bind(c.State(), c)
			host.SetErrorSink(c.ReportError)
			startErr = host.Start(ctx)
		},
		ReportInterval: 100 * time.Millisecond, ScanInterval: 200 * time.Millisecond, KeepAlive: time.Second,
		SimCPUs: 100000, SimMemMB: 1 << 30, SimPersist: true})
	if err != nil {
		t.Fatal(err)
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
	t.Cleanup(s.Close)
	return &luaEnv{site: s, host: host, policies: policies}
}

func (e *luaEnv) login(t *testing.T, user string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := e.site.Client(ctx, user, user+"-pw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeScript saves a policy the way editors do: a temp file renamed over
// the target.
func writeScript(t *testing.T, dir, name, src string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp~")
	if err := os.WriteFile(tmp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits until the host's status of script satisfies ok.
func (e *luaEnv) waitStatus(t *testing.T, script string, ok func(api.ScriptStatus) bool) api.ScriptStatus {
	t.Helper()
	var got api.ScriptStatus
	waitfor.Error(t, 10*time.Second, "script "+script+" to reach the expected status", func() error {
		for _, st := range e.host.Status() {
			if st.Name == script && ok(st) {
				got = st
				return nil
			}
		}
		return fmt.Errorf("status %+v", e.host.Status())
	})
	return got
}

func pinScript(node string) string {
	return fmt.Sprintf(`-- pin every VM on %[1]s
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.lnm = %[1]q end
end, {order = 50, name = "pin"})
`, node)
}

func TestLuaShippedPoliciesQuotaAuthz(t *testing.T) {
	e := luaSite(t, 2, []string{"auth_htpasswd", "authz_owner", "quota", "place_leastloaded"},
		map[string]map[string]any{"quota": {"max_vms": 3}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.site.Client(ctx, "alice", "wrong"); err == nil {
		t.Fatal("wrong password accepted by auth_htpasswd")
	}
	alice := e.login(t, "alice")
	r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 5})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requested != 5 || r.OK() != 3 || len(r.Dropped) != 2 {
		t.Fatalf("quota: %+v", r)
	}
	for _, d := range r.Dropped {
		if d.Reason != "quota: 3 of 5 allowed" || !strings.Contains(d.By, "quota") {
			t.Fatalf("drop: %+v", d)
		}
	}
	for _, d := range r.Done {
		if !d.OK || d.LNM == "" {
			t.Fatalf("not placed: %+v", d)
		}
	}
	bob := e.login(t, "bob")
	br, err := bob.OpOnNames(ctx, api.OpDestroy, []string{r.Done[0].Name}, nil)
	if err != nil || br.OK() != 0 {
		t.Fatalf("bob touched alice's VM: %v %+v", err, br)
	}
	if _, err := bob.List(ctx, api.ListArgs{All: true}); err == nil || !strings.Contains(err.Error(), "administrators") {
		t.Fatalf("bob list -a: %v", err)
	}
	root := e.login(t, "root")
	if !root.Identity().Admin {
		t.Fatal("root is not admin")
	}
	if lr, err := root.List(ctx, api.ListArgs{All: true}); err != nil || len(lr.VMs) != 3 {
		t.Fatalf("admin list: %v", err)
	}
}

func TestLuaHotSwapUnderLoad(t *testing.T) {
	e := luaSite(t, 2, []string{"auth_htpasswd", "authz_owner"}, nil)
	writeScript(t, e.policies, "place.lua", pinScript("node1"))
	e.waitStatus(t, "place", func(s api.ScriptStatus) bool { return s.Loaded })
	alice := e.login(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var failed, total atomic.Int64
	progress := make(chan struct{}, 4*500)
	var mu sync.Mutex
	placements := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				r, err := alice.Start(ctx, api.StartArgs{Cluster: "load", Count: 1})
				total.Add(1)
				progress <- struct{}{}
				if err != nil || r.OK() != 1 {
					if failed.Add(1) == 1 {
						t.Logf("first failure: %v %+v", err, r)
					}
					continue
				}
				mu.Lock()
				placements[r.Done[0].LNM]++
				mu.Unlock()
			}
		}()
	}
	waitN := func(n int) {
		for i := 0; i < n; i++ {
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatal("requests stalled")
			}
		}
	}
	// Let some requests run on the old version, then swap.
	waitN(20)
	writeScript(t, e.policies, "place.lua", pinScript("node2"))
	e.waitStatus(t, "place", func(s api.ScriptStatus) bool { return placedOn(e, "node2") })
	// and some more on the new one
	waitN(20)
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed during the swap", f, total.Load())
	}
	if placements["node1"] == 0 || placements["node2"] == 0 {
		t.Fatalf("placement did not change: %v", placements)
	}
}

// placedOn reports whether the newest VM started is on node.
func placedOn(e *luaEnv, node string) bool {
	vms := e.site.Controller.State().VMsOn(node)
	return len(vms) > 0
}

func TestLuaSyntaxErrorKeepsOldVersion(t *testing.T) {
	e := luaSite(t, 2, []string{"auth_htpasswd", "authz_owner"}, nil)
	writeScript(t, e.policies, "place.lua", pinScript("node1"))
	old := e.waitStatus(t, "place", func(s api.ScriptStatus) bool { return s.Loaded })
	alice := e.login(t, "alice")
	writeScript(t, e.policies, "place.lua", "usher.on(\"start_request\", function(req)\n  for _, vm in ipairs(req.vms do\nend)\n")
	st := e.waitStatus(t, "place", func(s api.ScriptStatus) bool { return s.LastError != "" })
	if !strings.Contains(st.LastError, "place.lua:2") || st.Hash != old.Hash {
		t.Fatalf("error not reported with file:line, or version replaced: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 2})
	if err != nil || r.OK() != 2 || r.Done[0].LNM != "node1" || r.Done[1].LNM != "node1" {
		t.Fatalf("old version not in charge: %v %+v", err, r)
	}
}

func TestLuaHostileScriptsCutOff(t *testing.T) {
	e := luaSiteBudget(t, 2, []string{"auth_htpasswd", "authz_owner", "place_roundrobin"}, nil, 100*time.Millisecond)
	writeScript(t, e.policies, "evil.lua", `
usher.on("start_request", function(req)
  local a = req.args or {}
  if a.evil == "loop" then while true do end end
  if a.evil == "mem" then
    local t = {}
    while true do t[#t + 1] = string.rep("x", 1000000) .. #t end
  end
end, {order = 30, name = "evil"})
`)
	e.waitStatus(t, "evil", func(s api.ScriptStatus) bool { return s.Loaded })
	alice := e.login(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, kind := range []string{"loop", "mem"} {
		var wg sync.WaitGroup
		var evilErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, evilErr = alice.Start(ctx, api.StartArgs{Cluster: "evil" + kind, Count: 1, Args: map[string]string{"evil": kind}})
		}()
		// Others are served while the hostile handler runs.
		for i := 0; i < 5; i++ {
			r, err := alice.Start(ctx, api.StartArgs{Cluster: "good" + kind, Count: 1})
			if err != nil || r.OK() != 1 {
				t.Fatalf("%s: a normal request failed: %v %+v", kind, err, r)
			}
		}
		wg.Wait()
		if evilErr == nil || !strings.Contains(evilErr.Error(), "evil.lua") {
			t.Fatalf("%s: hostile handler not cut off with its name: %v", kind, evilErr)
		}
	}
	// The controller still serves everyone.
	if r, err := alice.Start(ctx, api.StartArgs{Cluster: "after", Count: 2}); err != nil || r.OK() != 2 {
		t.Fatalf("after hostile scripts: %v %+v", err, r)
	}
}

// TestDocumentedMissingCleanup: the vm_missing clean-up example of
// docs/lua-api.md, as printed there, removes a VM that vanished behind
// Usher's back: its record goes, its capacity comes back, the state's
// invariants hold.
func TestDocumentedMissingCleanup(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("docs", "lua-api.md"))
	if err != nil {
		t.Fatal(err)
	}
	var example string
	for _, block := range strings.Split(string(doc), "```lua\n")[1:] {
		block = block[:strings.Index(block, "```")]
		if strings.Contains(block, `usher.on("vm_missing"`) {
			example = block
		}
	}
	if example == "" {
		t.Fatal("docs/lua-api.md has no vm_missing example")
	}
	e := luaSite(t, 1, []string{"auth_htpasswd", "authz_owner", "place_roundrobin"}, nil)
	writeScript(t, e.policies, "cleanup.lua", example)
	e.waitStatus(t, "cleanup", func(st api.ScriptStatus) bool { return st.Loaded })
	alice := e.login(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 2, MemMB: 512, VCPUs: 2})
	if err != nil || r.OK() != 2 {
		t.Fatalf("start: %v %+v", err, r)
	}
	gone, node := r.Done[0].Name, r.Done[0].LNM
	before, _ := e.site.Controller.State().LNM(node)
	if err := injectVanish(e.site, node, gone); err != nil {
		t.Fatal(err)
	}
	waitfor.Error(t, 30*time.Second, "the clean-up policy to remove "+gone, func() error {
		if v, ok := e.site.Controller.State().VM(gone); ok {
			return fmt.Errorf("it is still recorded, %s", v.State)
		}
		return nil
	})
	if _, ok := e.site.Controller.State().VM(r.Done[1].Name); !ok {
		t.Fatalf("the other VM, %s, went too", r.Done[1].Name)
	}
	waitfor.Error(t, 30*time.Second, "the vanished VM's capacity back on "+node, func() error {
		l, _ := e.site.Controller.State().LNM(node)
		if l.Status.FreeMemMB < before.Status.FreeMemMB+512 {
			return fmt.Errorf("%d MiB free, was %d with the VM", l.Status.FreeMemMB, before.Status.FreeMemMB)
		}
		return nil
	})
	if err := e.site.Controller.State().Check(); err != nil {
		t.Fatal(err)
	}
}
