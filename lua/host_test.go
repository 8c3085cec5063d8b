package lua

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core/coretest"

	"github.com/usher-vm/usher/core"
)

func writeScript(t testing.TB, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// saveByRename writes like an editor: temp file, then rename over.
func saveByRename(t testing.TB, dir, name, src string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".swp")
	if err := os.WriteFile(tmp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testView() *coretest.View {
	v := coretest.NewView("usher.test")
	for _, n := range []string{"n1", "n2", "n3"} {
		v.AddLNM(&api.LNM{Info: api.NodeInfo{Name: n, CPUs: 8, MemMB: 16384},
			Status: api.NodeStatus{FreeMemMB: 8192, FreeVCPUs: 8}, State: api.LNMConnected})
	}
	return v
}

func newHost(t testing.TB, opts Options) *Host {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.Bind(testView(), nil)
	if err := h.Start(context.Background()); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func startReq(names ...string) *core.Request {
	r := &core.Request{ID: "r1", Kind: core.KindStart, User: api.Identity{User: "alice"}, Cluster: "c"}
	for _, n := range names {
		r.VMs = append(r.VMs, core.ReqVM{Name: n + ".alice.usher.test", Short: n, Owner: "alice", Cluster: "c", MemMB: 512, VCPUs: 1})
	}
	return r
}

// opReq is an op request for op on the named VMs.
func opReq(op api.Op, names ...string) *core.Request {
	r := startReq(names...)
	r.Kind, r.Op = core.KindOp, op
	return r
}

// run passes req through the chain of event (authorize included) with a
// fresh decision and returns the decision the chain left.
func run(h *Host, event string, req *core.Request) (*core.Decision, error) {
	d := core.NewDecision(req)
	var err error
	if event == api.EvAuthorize {
		err = h.Authorize(context.Background(), req, d)
	} else {
		err = h.Request(context.Background(), event, req, d)
	}
	return d, err
}

// mustRun is run that fails the test on an error.
func mustRun(t testing.TB, h *Host, event string, req *core.Request) *core.Decision {
	t.Helper()
	d, err := run(h, event, req)
	if err != nil {
		t.Fatalf("%s: %v", event, err)
	}
	return d
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

// traceOf is the decision's trace as "handler=action ...".
func traceOf(d *core.Decision) string {
	var got []string
	for _, s := range d.Trace {
		got = append(got, s.Handler+"="+s.Action)
	}
	return strings.Join(got, " ")
}

// rejection is the reason of a *core.RejectError in err ("" if none).
func rejection(err error) string {
	var re *core.RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

func TestChainOrderAndModification(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "b.lua", `
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.data.seen = (vm.data.seen or "") .. "b" end
end, {order = 20, name = "second"})`)
	writeScript(t, dir, "a.lua", `
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.data.seen = (vm.data.seen or "") .. "a"; vm.lnm = "n2" end
  req:drop(req.vms[2].name, "too many")
end, {order = 10, name = "first"})
usher.on("start_request", function(req) end, {order = 30, name = "third"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	req := startReq("c1", "c2", "c3")
	d := mustRun(t, h, api.EvStartRequest, req)
	kept := keptVMs(req, d)
	if len(kept) != 2 || kept[0].Short != "c1" || kept[1].Short != "c3" || d.Kept() != 2 || !d.VMs[1].Dropped {
		t.Fatalf("vms after chain: %+v", kept)
	}
	for _, v := range kept {
		if v.Data["seen"] != "ab" || v.LNM != "n2" {
			t.Fatalf("vm %s: data %v lnm %q", v.Name, v.Data, v.LNM)
		}
	}
	if len(d.Dropped) != 1 || d.Dropped[0].VM != "c2.alice.usher.test" || d.Dropped[0].Reason != "too many" || d.Dropped[0].By != "a.lua:first" {
		t.Fatalf("dropped: %+v", d.Dropped)
	}
	want := "a.lua:first=modified b.lua:second=modified a.lua:third=approved"
	if got := traceOf(d); got != want {
		t.Fatalf("trace %q, want %q", got, want)
	}
	// The request itself is input only: the chain changed nothing in it.
	if !reflect.DeepEqual(req, startReq("c1", "c2", "c3")) {
		t.Fatalf("request changed by the chain: %+v", req)
	}
}

func TestRejectNamesHandler(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "deny.lua", `
usher.on("op_request", function(req)
  if req.op == "destroy" then return usher.reject("no destroying on fridays") end
end, {name = "friday"})
usher.on("migrate_request", function(req) error("boom") end, {name = "broken"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	d, err := run(h, api.EvOpRequest, opReq(api.OpDestroy, "c1"))
	var re *core.RejectError
	if !errors.As(err, &re) || re.Handler != "deny.lua:friday" || re.Reason != "no destroying on fridays" || re.Event != api.EvOpRequest {
		t.Fatalf("err = %#v", err)
	}
	if last := d.Trace[len(d.Trace)-1]; last.Action != "rejected" || last.Detail != "no destroying on fridays" || last.Handler != "deny.lua:friday" {
		t.Fatalf("trace: %+v", d.Trace)
	}
	req := startReq("c1")
	req.Kind = core.KindMigrate
	d, err = run(h, api.EvMigrateRequest, req)
	if !errors.As(err, &re) || re.Handler != "deny.lua:broken" || !strings.Contains(re.Reason, "deny.lua:5: boom") {
		t.Fatalf("err = %v", err)
	}
	if last := d.Trace[len(d.Trace)-1]; last.Action != "error" || !strings.Contains(last.Detail, "deny.lua:5: boom") {
		t.Fatalf("trace: %+v", d.Trace)
	}
	mustRun(t, h, api.EvOpRequest, opReq(api.OpPause, "c1"))
}

func TestAuthenticateChain(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "a1.lua", `usher.on("authenticate", function(c) error("ldap down") end, {order = 1})`)
	writeScript(t, dir, "a2.lua", `usher.on("authenticate", function(c)
  if c.user == "bob" and c.password == "pw" then return true, {groups = {"staff"}, admin = false} end
  return false
end, {order = 2})`)
	var mu sync.Mutex
	var sunk []api.Event
	h, _ := New(Options{Dirs: []string{dir}, Logger: quietLogger()})
	h.SetErrorSink(func(e api.Event) { mu.Lock(); sunk = append(sunk, e); mu.Unlock() })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	id, err := h.Authenticate(context.Background(), core.Credentials{User: "bob", Password: "pw"})
	if err != nil || id.User != "bob" || len(id.Groups) != 1 || id.Groups[0] != "staff" {
		t.Fatalf("id %+v err %v", id, err)
	}
	if _, err := h.Authenticate(context.Background(), core.Credentials{User: "bob", Password: "no"}); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("err %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sunk) == 0 || sunk[0].Type != api.EvError || sunk[0].Detail["script"] != "a1.lua" || sunk[0].Detail["line"] != "1" {
		t.Fatalf("error events: %+v", sunk)
	}
}

func TestSandbox(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "probe.lua", `
usher.on("authorize", function(req)
  local absent = {}
  for _, n in ipairs({"os", "io", "debug", "load", "loadstring", "dofile", "loadfile",
                      "package", "coroutine", "collectgarbage", "getfenv", "setfenv", "newproxy", "module", "_printregs"}) do
    if _G[n] ~= nil then error("present: " .. n) end
  end
  -- require is the sandboxed one: bare library names only (require.go)
  if type(require) ~= "function" or pcall(require, "../os") or pcall(require, "os.execute") then
    error("unsandboxed require")
  end
  if getmetatable("") ~= "locked" then error("string metatable exposed") end
  local ok = pcall(setmetatable, getmetatable(""), {})
  if ok then error("string metatable replaceable") end
  ok = pcall(function() string.upper = function() return "pwned" end end)
  if ok then error("string table writable") end
  ok = pcall(function() usher.vm = nil end)
  if ok then error("usher table writable") end
  if string.dump ~= nil then error("string.dump present") end
end)`)
	h := newHost(t, Options{Dirs: []string{dir}})
	mustRun(t, h, api.EvAuthorize, startReq("c1"))
}

func TestStatusCounts(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "s.lua", `
usher.on("start_request", function(req) end, {name = "ok"})
usher.on("op_request", function(req) error("x") end, {name = "bad", order = 7})
usher.every("1h", function() end, {name = "hourly"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	for i := 0; i < 5; i++ {
		mustRun(t, h, api.EvStartRequest, startReq("c1"))
	}
	if _, err := run(h, api.EvOpRequest, opReq(api.OpPause, "c1")); err == nil {
		t.Fatal("the failing op_request handler did not fail the chain")
	}
	st := h.Status()
	if len(st) != 1 || !st[0].Loaded || st[0].Hash == "" || len(st[0].Handlers) != 3 {
		t.Fatalf("status %+v", st)
	}
	hs := map[string]api.HandlerStatus{}
	for _, x := range st[0].Handlers {
		hs[x.Name] = x
	}
	if hs["ok"].Calls != 5 || hs["ok"].Errors != 0 || hs["ok"].MeanUS <= 0 || hs["ok"].P50US <= 0 {
		t.Fatalf("ok: %+v", hs["ok"])
	}
	if hs["bad"].Calls != 1 || hs["bad"].Errors != 1 || hs["bad"].Order != 7 {
		t.Fatalf("bad: %+v", hs["bad"])
	}
	if hs["hourly"].Event != "timer" || hs["hourly"].Every != "1h0m0s" {
		t.Fatalf("timer: %+v", hs["hourly"])
	}
}

func TestRegisterUnregisterSetActive(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "p.lua", `
usher.on("start_request", function(req) for _, v in ipairs(req.vms) do v.lnm = "n1" end end, {name = "pack"})
function spread(req) for _, v in ipairs(req.vms) do v.lnm = "n3" end end`)
	h := newHost(t, Options{Dirs: []string{dir}})
	run := func() string {
		return mustRun(t, h, api.EvStartRequest, startReq("c1")).VMs[0].LNM
	}
	if got := run(); got != "n1" {
		t.Fatalf("got %q", got)
	}
	if err := h.Unregister("p", "start_request"); err != nil {
		t.Fatal(err)
	}
	if got := run(); got != "" {
		t.Fatalf("after unregister got %q", got)
	}
	if err := h.Register("p", "start_request", "spread", 60); err != nil {
		t.Fatal(err)
	}
	if got := run(); got != "n3" {
		t.Fatalf("after register got %q", got)
	}
	if err := h.Register("p", "start_request", "nope", 60); err == nil {
		t.Fatal("registering a missing function succeeded")
	}
	h.SetActive("start_request", "spread", false)
	if got := run(); got != "n1" {
		t.Fatalf("after set_active(false) got %q", got)
	}
}

func TestLogAndPrint(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "l.lua", `print("hello", 1) usher.log.warn("careful", "vm", "x", "n", 3)
usher.on("authorize", function() end)`)
	var buf bytes.Buffer
	var mu sync.Mutex
	h, _ := New(Options{Dirs: []string{dir}, Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &buf}, nil))})
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.Close()
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	if !strings.Contains(out, `msg="hello\t1"`) || !strings.Contains(out, "script=l.lua") || !strings.Contains(out, "msg=careful") || !strings.Contains(out, "vm=x") {
		t.Fatalf("log: %s", out)
	}
}

var _ = time.Second

func TestActionsOnlyFromAsyncHandlers(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "act.lua", `
usher.on("start_request", function(req) usher.op("pause", {"x"}) end)
usher.every("1h", function() local r, err = usher.migrate({"v1.alice.usher.test"}, {"n2"}); usher.store.set("res", r and r.requested or err) end, {name = "mover"})
usher.every("1h", function() usher.set_active("start_request", "act", false) end, {name = "night"})`)
	rec := &recorder{}
	h, _ := New(Options{Dirs: []string{dir}, Logger: quietLogger(), StorePath: filepath.Join(dir, "store.db")})
	h.Bind(testView(), rec)
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, err := run(h, api.EvStartRequest, startReq("c1"))
	if err == nil || !strings.Contains(err.Error(), "usher.op may only be called from timers") || !strings.Contains(err.Error(), "act.lua:2:") {
		t.Fatalf("err = %v", err)
	}
	if err := h.RunTimers(context.Background(), "act"); err != nil {
		t.Fatal(err)
	}
	if len(rec.log) != 1 || rec.log[0]["kind"] != "migrate" {
		t.Fatalf("actions %+v", rec.log)
	}
	// the night timer switched the failing start handler off
	if _, err := run(h, api.EvStartRequest, startReq("c1")); err != nil {
		t.Fatalf("set_active did not switch off: %v", err)
	}
	// the store was written atomically to disk and reloads
	h.Close()
	st, err := openStore(filepath.Join(dir, "store.db"), StoreLimits{}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if v, err := st.get("res"); err != nil || v != float64(1) {
		t.Fatalf("store reload: %v %v", v, err)
	}
}

// TestUsageView: node usage reaches scripts as a read-only view indexed by
// measure name.
func TestUsageView(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "u.lua", `
usher.on("start_request", function(req)
  local n = usher.lnm("n2")
  local u = n.status.usage
  local ok, err = pcall(function() u.cpu = 1 end)
  for _, vm in ipairs(req.vms) do
    vm.data.cpu = string.format("%.2f/%.2f/%.2f", u.cpu.m1, u.cpu.m5, u.cpu.m15)
    vm.data.rx = tostring(u.net_rx.m1)
    vm.data.none = tostring(u.nosuch)
    vm.data.ro = tostring(ok) .. ":" .. tostring(string.find(tostring(err), "read%-only") ~= nil)
    vm.data.str = tostring(u)
  end
end, {order = 10, name = "use"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	v := testView()
	v.AddLNM(&api.LNM{Info: api.NodeInfo{Name: "n2", CPUs: 8}, State: api.LNMConnected,
		Status: api.NodeStatus{Usage: api.Usage{CPU: api.Avg{M1: 1.5, M5: 0.25, M15: 2}, NetRx: api.Avg{M1: 42}}}})
	h.Bind(v, nil)
	d := mustRun(t, h, api.EvStartRequest, startReq("c1")).VMs[0].Data
	if d["cpu"] != "1.50/0.25/2.00" || d["rx"] != "42" || d["none"] != "nil" || d["ro"] != "false:true" || d["str"] != "usage{cpu=1.50/0.25/2.00}" {
		t.Fatalf("usage as seen by the script: %v", d)
	}
}

// TestRequestVMViews: request VMs are views onto the request: writes land
// in the Go request, read-only fields and bad values raise errors that name
// the script and line, a script's own fields live for the call, and a view
// kept past its handler cannot be used.
func TestRequestVMViews(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "v.lua", `
kept = nil
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do
    vm.scratch = vm.mem_mb * 2          -- a script's own field
    vm.lnm = "n3"
    vm.vcpus = "4"                      -- numeric strings are numbers
    vm.data.note = tostring(vm.scratch) .. ":" .. tostring(vm)
  end
  kept = req.vms[1]
end, {order = 10, name = "write"})
usher.on("start_request", function(req)
  if req.vms[1].scratch ~= nil then error("a script field leaked into the next handler") end
end, {order = 20, name = "fresh"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	req := startReq("c1", "c2")
	req.VMs[0].MemMB = 256
	d := mustRun(t, h, api.EvStartRequest, req)
	for _, v := range keptVMs(req, d) {
		if v.LNM != "n3" || v.VCPUs != 4 || v.Data["note"] != fmt.Sprint(v.MemMB*2)+":vm "+v.Name {
			t.Fatalf("%s after the chain: %+v", v.Name, v)
		}
	}
	if d.VMs[0].MemMB != 256 || d.VMs[1].MemMB != 512 {
		t.Fatalf("memory: %+v", d.VMs)
	}
	if d.Trace[0].Action != "modified" || d.Trace[1].Action != "approved" {
		t.Fatalf("trace %+v", d.Trace)
	}

	for _, tc := range []struct{ body, want string }{
		{`req.vms[1].name = "x"`, "v2.lua:3: vm.name is read-only"},
		{`req.vms[1].mem_mb = "lots"`, "v2.lua:3: vm.mem_mb must be a whole number"},
		{`req.vms[1].data = 5`, "v2.lua:3: vm.data must be a table"},
		{`local x = kept.lnm`, "used after its handler returned"},
	} {
		dir2 := t.TempDir()
		writeScript(t, dir2, "v2.lua", "usher.on(\"start_request\", function(req)\n  kept = kept or req.vms[1]\n  "+tc.body+"\nend, {name = \"bad\"})")
		h2 := newHost(t, Options{Dirs: []string{dir2}})
		if tc.want == "used after its handler returned" {
			// the first call keeps the view in a global; the second uses it
			writeScript(t, dir2, "v2.lua", "usher.on(\"start_request\", function(req)\n  if kept then local x = kept.lnm end\n  kept = req.vms[1]\nend, {name = \"bad\"})")
			h2 = newHost(t, Options{Dirs: []string{dir2}})
			run(h2, api.EvStartRequest, startReq("c1"))
		}
		_, err := run(h2, api.EvStartRequest, startReq("c1"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: got %v, want an error containing %q", tc.body, err, tc.want)
		}
	}
}

// TestRequestView: the request is a view: fields read the Go request and
// the decision so far, op and args change (op validated) in op_request,
// lnms and args are read back in migrate_request, a script's own fields
// last for its call only, read-only fields (id, user, cluster) and fields
// that cannot change in the event (lnms in op_request) raise naming the
// script and line, and a request kept past its handler cannot be used.
func TestRequestView(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "r.lua", `
kept = nil
usher.on("op_request", function(req)
  if req.kind ~= "op" or req.id ~= "r1" or req.user.user ~= "alice" or req.user.admin or req.op ~= "pause"
     or #req.user.groups ~= 0 or tostring(req.user) ~= "identity alice" or req.cluster ~= "c" then
    error("read " .. tostring(req) .. " " .. tostring(req.op))
  end
  if req.all or req.dry_run or #req.lnms ~= 0 or next(req.args) ~= nil then error("defaults") end
  req.note = "mine"
  req.op = "resume"
  req.args.image = "debian"
  if req.note ~= "mine" then error("own field lost") end
  kept = req
end, {order = 10, name = "write"})
usher.on("op_request", function(req)
  if req.note ~= nil then error("a script field leaked into the next handler") end
  if req.op ~= "resume" or req.args.image ~= "debian" then
    error("changes not seen by the next handler")
  end
end, {order = 20, name = "read"})
usher.on("migrate_request", function(req)
  req.lnms = {"n2"}
  req.args.image = "debian"
end, {order = 10, name = "suggest"})
usher.on("migrate_request", function(req)
  if req.lnms[1] ~= "n2" or #req.lnms ~= 1 or req.args.image ~= "debian" then
    error("changes not seen by the next handler")
  end
end, {order = 20, name = "see"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	req := opReq(api.OpPause, "c1")
	d := mustRun(t, h, api.EvOpRequest, req)
	if d.Op != api.OpResume || len(d.LNMs) != 0 || d.Args["image"] != "debian" || len(d.Args) != 1 {
		t.Fatalf("after the chain: %+v", d)
	}
	if req.Op != api.OpPause || req.Args != nil {
		t.Fatalf("the chain changed the request: %+v", req)
	}
	if d.Trace[0].Action != "modified" || d.Trace[1].Action != "approved" {
		t.Fatalf("trace %+v", d.Trace)
	}
	mig := startReq("c1")
	mig.Kind = core.KindMigrate
	d = mustRun(t, h, api.EvMigrateRequest, mig)
	if len(d.LNMs) != 1 || d.LNMs[0] != "n2" || d.Args["image"] != "debian" || mig.LNMs != nil || mig.Args != nil {
		t.Fatalf("after the migrate chain: %+v (request %+v)", d, mig)
	}
	if got := traceOf(d); got != "r.lua:suggest=modified r.lua:see=approved" {
		t.Fatalf("trace %q", got)
	}

	for _, tc := range []struct{ event, body, want string }{
		{api.EvOpRequest, `req.id = "x"`, "r2.lua:3: req.id is read-only"},
		{api.EvOpRequest, `req.user = {}`, "r2.lua:3: req.user is read-only"},
		{api.EvOpRequest, `req.user.admin = true`, "r2.lua:3: req.user is read-only"},
		{api.EvOpRequest, `req.op = "explode"`, "r2.lua:3: req.op: unknown operation"},
		{api.EvOpRequest, `req.cluster = "db"`, "r2.lua:3: req.cluster is read-only"},
		{api.EvOpRequest, `req.lnms = {"n2"}`, "r2.lua:3: req.lnms cannot change in op_request (it may in: start_request, migrate_request)"},
		{api.EvOpRequest, `req.lnms[1] = "n2"`, "r2.lua:3: req.lnms cannot change in op_request"},
		{api.EvMigrateRequest, `req.lnms = 5`, "r2.lua:3: req.lnms must be a table"},
		{api.EvOpRequest, `local x = kept.kind`, "used after its handler returned"},
	} {
		dir2 := t.TempDir()
		body := "usher.on(\"" + tc.event + "\", function(req)\n  kept = kept or req\n  " + tc.body + "\nend, {name = \"bad\"})"
		if tc.want == "used after its handler returned" {
			// the first call keeps the request in a global; the second uses it
			body = "usher.on(\"" + tc.event + "\", function(req)\n  if kept then local x = kept.kind end\n  kept = req\nend, {name = \"bad\"})"
		}
		writeScript(t, dir2, "r2.lua", body)
		h2 := newHost(t, Options{Dirs: []string{dir2}})
		r := func() *core.Request {
			r := opReq(api.OpPause, "c1")
			if tc.event == api.EvMigrateRequest {
				r.Kind, r.Op = core.KindMigrate, ""
			}
			return r
		}
		if tc.want == "used after its handler returned" {
			run(h2, tc.event, r())
		}
		_, err := run(h2, tc.event, r())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: got %v, want an error containing %q", tc.body, err, tc.want)
		}
	}
}

// TestWants: the host tells the core which notification events a loaded
// script handles (core.EventWanter), following loads and unregistering.
func TestWants(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "w.lua", `usher.on("state_changed", function(ev) end, {name = "watch"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	var _ core.EventWanter = h
	if !h.Wants(api.EvStateChanged) {
		t.Fatal("Wants(state_changed) = false with a handler loaded")
	}
	if h.Wants(api.EvStartComplete) {
		t.Fatal("Wants(start_complete) = true with no handler for it")
	}
	if err := h.Unregister("w", "state_changed"); err != nil {
		t.Fatal(err)
	}
	if h.Wants(api.EvStateChanged) {
		t.Fatal("Wants(state_changed) = true after its handler was unregistered")
	}
}

// TestFieldRulesRaiseAtLine: a handler may change only what
// core.FieldRules allow in its event. Assigning anything else raises at the
// script's line naming the field (and where it may change); the chain is
// rejected with that reason and the decision is as it was. A write the
// event allows (op in op_request) lands in the decision, and a script may
// catch a refused write and go on.
func TestFieldRulesRaiseAtLine(t *testing.T) {
	// existing is a request of event for one VM, on n1 with data.
	existing := func(event string) *core.Request {
		r := startReq("c1")
		switch event {
		case api.EvOpRequest:
			r.Kind, r.Op = core.KindOp, api.OpDestroy
		case api.EvMigrateRequest:
			r.Kind = core.KindMigrate
		}
		if event != api.EvStartRequest && event != api.EvRegisterVM {
			r.VMs[0].LNM, r.VMs[0].State = "n1", api.StateRunning
		}
		r.VMs[0].Data = api.StringMap{"image": "debian"}
		return r
	}
	for _, tc := range []struct{ event, body, want string }{
		{api.EvOpRequest, `req.vms[1].lnm = "n2"`, "vm.lnm cannot change in op_request (it may in: start_request)"},
		{api.EvMigrateRequest, `req.vms[1].lnm = "n2"`, "vm.lnm cannot change in migrate_request (it may in: start_request)"},
		{api.EvRegisterVM, `vm.lnm = "n2"`, "vm.lnm cannot change in register_vm (it may in: start_request)"},
		{api.EvStartRequest, `req.vms[1].target = "n2"`, "vm.target cannot change in start_request (it may in: migrate_request)"},
		{api.EvMigrateRequest, `req.vms[1].mem_mb = 1024`, "vm.mem_mb cannot change in migrate_request (it may in: start_request)"},
		{api.EvOpRequest, `req.vms[1].vcpus = 2`, "vm.vcpus cannot change in op_request (it may in: start_request)"},
		{api.EvOpRequest, `req.vms[1].data.image = "evil"`, "vm.data cannot change in op_request"},
		{api.EvAuthorize, `req.vms[1].data = {}`, "vm.data cannot change in authorize (it may in: start_request, register_vm)"},
		{api.EvStartRequest, `req.op = "pause"`, "req.op cannot change in start_request (it may in: op_request)"},
		{api.EvMigrateRequest, `req.op = "pause"`, "req.op cannot change in migrate_request (it may in: op_request)"},
		{api.EvAuthorize, `req.args = {x = "1"}`, "req.args cannot change in authorize (it may in: start_request, op_request, migrate_request)"},
		{api.EvAuthorize, `req.args.x = "1"`, "req.args cannot change in authorize"},
		{api.EvOpRequest, `req.lnms = {"n2"}`, "req.lnms cannot change in op_request (it may in: start_request, migrate_request)"},
		{api.EvRegisterVM, `req.vms = {}`, "req.vms cannot change in register_vm (it may in: authorize, start_request, op_request, migrate_request)"},
		{api.EvRegisterVM, `req.vms[1] = nil`, "req.vms cannot change in register_vm"},
		{api.EvStartRequest, `req.cluster = "db"`, "req.cluster is read-only"},
		{api.EvOpRequest, `req.cluster = "db"`, "req.cluster is read-only"},
	} {
		t.Run(tc.event+"/"+tc.body, func(t *testing.T) {
			dir := t.TempDir()
			writeScript(t, dir, "fields.lua", "usher.on(\""+tc.event+"\", function(req, vm)\n  "+tc.body+"\nend, {name = \"bad\"})")
			h := newHost(t, Options{Dirs: []string{dir}})
			req := existing(tc.event)
			d := core.NewDecision(req)
			var err error
			switch tc.event {
			case api.EvRegisterVM:
				err = h.RegisterVM(context.Background(), req, d, 0)
			case api.EvAuthorize:
				err = h.Authorize(context.Background(), req, d)
			default:
				err = h.Request(context.Background(), tc.event, req, d)
			}
			var re *core.RejectError
			want := "fields.lua:2: " + tc.want
			if !errors.As(err, &re) || re.Event != tc.event || re.Handler != "fields.lua:bad" || !strings.Contains(re.Reason, want) {
				t.Fatalf("err = %v, want a rejection by fields.lua:bad containing %q", err, want)
			}
			if len(d.Trace) != 1 || d.Trace[0].Action != "error" || !strings.Contains(d.Trace[0].Detail, want) {
				t.Fatalf("trace %+v", d.Trace)
			}
			got := d.Clone()
			got.Trace = nil
			if wd := core.NewDecision(existing(tc.event)); !reflect.DeepEqual(got, wd) {
				t.Fatalf("decision changed by a refused write:\n%+v\nwant\n%+v", got, wd)
			}
			if !reflect.DeepEqual(req, existing(tc.event)) {
				t.Fatalf("request changed: %+v", req)
			}
		})
	}

	// op_request may rewrite the op; a refused write can be caught.
	dir := t.TempDir()
	writeScript(t, dir, "soft.lua", `
usher.on("op_request", function(req)
  local ok, err = pcall(function() req.vms[1].lnm = "n2" end)
  if ok or not string.find(err, "soft.lua:3: vm.lnm cannot change in op_request", 1, true) then
    error("vm.lnm written in op_request: " .. tostring(err))
  end
  if req.op == "destroy" then req.op = "pause" end
end, {order = 10, name = "soften"})
usher.on("op_request", function(req)
  if req.op ~= "pause" or req.vms[1].lnm ~= "n1" then error("next handler saw " .. req.op .. " on " .. req.vms[1].lnm) end
end, {order = 20, name = "check"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	req := existing(api.EvOpRequest)
	d := mustRun(t, h, api.EvOpRequest, req)
	if d.Op != api.OpPause || req.Op != api.OpDestroy || d.VMs[0].LNM != "n1" || d.Kept() != 1 {
		t.Fatalf("decision %+v (request op %s)", d, req.Op)
	}
	if got := traceOf(d); got != "soft.lua:soften=modified soft.lua:check=approved" {
		t.Fatalf("trace %q", got)
	}
}
