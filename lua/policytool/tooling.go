package policytool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	glua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/fakes"
)

// Check compiles each file and runs its top level in a sandbox with an
// empty view and no actions, which validates registrations (known event
// names, valid intervals, duplicate handler names). Errors name file:line.
func Check(files []string) []error {
	h, err := lua.New(lua.Options{PoolSize: 1, Budget: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return []error{err}
	}
	defer h.Close()
	var errs []error
	for _, f := range files {
		if err := h.CheckFile(f); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// RunTests runs every *_test.lua file of dir. See docs/lua-api.md
// ("Testing policies") for the usher_test API.
func RunTests(dir string, w io.Writer) (passed, failed int, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.lua"))
	if err != nil {
		return 0, 0, err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return 0, 0, fmt.Errorf("no *_test.lua files in %s", dir)
	}
	for _, f := range files {
		p, fl := runTestFile(dir, f, w)
		passed += p
		failed += fl
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", passed, failed)
	return passed, failed, nil
}

// testRun is the state of one test file.
type testRun struct {
	dir    string
	file   string
	w      io.Writer
	load   []string
	config map[string]map[string]any
	view   *FixtureView
	acts   *recorder
	host   *lua.Host
	cases  int
	passed int
	failed int
	logs   *strings.Builder
	logger *slog.Logger
	images string // a temporary image store made by usher_test.images ("" = none)
}

func runTestFile(dir, path string, w io.Writer) (int, int) {
	file := filepath.Base(path)
	logs := &strings.Builder{}
	tr := &testRun{dir: dir, file: file, w: w, view: NewFixtureView(), acts: &recorder{},
		config: map[string]map[string]any{}, logs: logs,
		logger: slog.New(slog.NewTextHandler(&syncWriter{w: logs}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	tr.load = []string{strings.TrimSuffix(file, "_test.lua")}
	defer tr.closeHost()
	defer func() {
		if tr.images != "" {
			os.RemoveAll(tr.images)
		}
	}()
	src, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(w, "FAIL %s: %v\n", file, err)
		return 0, 1
	}
	proto, err := lua.Compile(src, file)
	if err != nil {
		fmt.Fprintf(w, "FAIL %s\n", err)
		return 0, 1
	}
	// The runner state is a sandbox like a policy's, plus usher_test.
	h, err := lua.New(lua.Options{Logger: tr.logger})
	if err != nil {
		fmt.Fprintf(w, "FAIL %s: %v\n", file, err)
		return 0, 1
	}
	defer h.Close()
	L := h.Sandbox(dir, file)
	defer L.Close()
	tr.install(L)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.Push(L.NewFunctionFromProto(proto))
	if err := L.PCall(0, 0, nil); err != nil {
		fmt.Fprintf(w, "FAIL %s: %s\n", file, lua.ErrMessage(err))
		tr.failed++
	} else if tr.cases == 0 {
		fmt.Fprintf(w, "ok   %s\n", file)
		tr.passed++
	}
	return tr.passed, tr.failed
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (tr *testRun) closeHost() {
	if tr.host != nil {
		tr.host.Close()
		tr.host = nil
	}
}

// ensureHost (re)creates the policy host with the current load list and
// config, and a fresh set of fake site modules.
func (tr *testRun) ensureHost(L *glua.LState) *lua.Host {
	if tr.host != nil {
		return tr.host
	}
	fk, err := fakes.New()
	if err != nil {
		L.RaiseError("usher_test: %v", err)
	}
	h, err := lua.New(lua.Options{Dirs: []string{tr.dir}, Enabled: tr.load, Config: tr.config, PoolSize: 2, Logger: tr.logger,
		Modules: fk.Modules(), ImageDir: tr.images})
	if err != nil {
		L.RaiseError("usher_test: %v", err)
	}
	h.Bind(tr.view, tr.acts)
	if err := h.Start(context.Background()); err != nil {
		h.Close()
		L.RaiseError("usher_test: loading policies: %v", err)
	}
	for _, n := range tr.load {
		found := false
		for _, s := range h.Status() {
			if s.Name == n && s.Loaded {
				found = true
			}
		}
		if !found {
			h.Close()
			L.RaiseError("usher_test: policy %q not found in %s", n, tr.dir)
		}
	}
	tr.host = h
	return h
}

func (tr *testRun) install(L *glua.LState) {
	t := L.NewTable()
	fns := map[string]glua.LGFunction{
		"load": func(L *glua.LState) int {
			tr.load = lua.Strings(L.CheckTable(1))
			tr.closeHost()
			return 0
		},
		"config": func(L *glua.LState) int {
			tb := L.CheckTable(1)
			tr.config = map[string]map[string]any{}
			tb.ForEach(func(k, v glua.LValue) {
				if vt, ok := v.(*glua.LTable); ok {
					m, err := lua.FromLua(vt, 8)
					if mm, ok := m.(map[string]any); ok && err == nil {
						tr.config[lua.ToString(k)] = mm
					}
				}
			})
			tr.closeHost()
			return 0
		},
		"images": func(L *glua.LState) int {
			// images{name = {format = "qcow2", min_mem_mb = 256, description = "…"}}:
			// a temporary image store with these images (empty base files).
			tb := L.CheckTable(1)
			if tr.images == "" {
				d, err := os.MkdirTemp("", "usher-test-images-")
				if err != nil {
					L.RaiseError("usher_test.images: %v", err)
				}
				tr.images = d
			}
			var bad error
			tb.ForEach(func(k, v glua.LValue) {
				vt, ok := v.(*glua.LTable)
				m, err := lua.FromLua(vt, 4)
				mm, isMap := m.(map[string]any)
				if bad != nil || !ok || err != nil || !isMap {
					bad = fmt.Errorf("image %s: want a table of metadata", lua.ToString(k))
					return
				}
				name := lua.ToString(k)
				format, _ := mm["format"].(string)
				if format == "" {
					format = "qcow2"
					mm["format"] = format
				}
				meta, _ := json.Marshal(mm)
				if err := os.WriteFile(filepath.Join(tr.images, name+".json"), meta, 0o644); err != nil {
					bad = err
				}
				if err := os.WriteFile(filepath.Join(tr.images, name+"."+format), nil, 0o644); err != nil {
					bad = err
				}
			})
			if bad != nil {
				L.RaiseError("usher_test.images: %v", bad)
			}
			tr.closeHost()
			return 0
		},
		"fixture": func(L *glua.LState) int {
			if err := tr.view.set(L.CheckTable(1)); err != nil {
				L.RaiseError("usher_test.fixture: %v", err)
			}
			tr.acts.reset()
			return 0
		},
		"request": func(L *glua.LState) int {
			event := L.CheckString(1)
			req, d, err := tr.view.request(event, L.CheckTable(2))
			if err != nil {
				L.RaiseError("usher_test.request: %v", err)
			}
			h := tr.ensureHost(L)
			var rerr error
			if event == api.EvAuthorize {
				rerr = h.Authorize(context.Background(), req, d)
			} else {
				rerr = h.Request(context.Background(), event, req, d)
			}
			L.Push(resultOf(L, req, d, rerr))
			if rerr != nil {
				L.Push(glua.LString(rerr.Error()))
				return 2
			}
			return 1
		},
		"register_vm": func(L *glua.LState) int {
			req, d, err := tr.view.request(api.EvStartRequest, L.CheckTable(1))
			if err != nil || len(req.VMs) == 0 {
				L.RaiseError("usher_test.register_vm: need a request with one VM: %v", err)
			}
			h := tr.ensureHost(L)
			if err := h.RegisterVM(context.Background(), req, d, 0); err != nil {
				L.Push(glua.LNil)
				L.Push(glua.LString(err.Error()))
				return 2
			}
			L.Push(decisionVMTable(L, req, d, 0))
			return 1
		},
		"authenticate": func(L *glua.LState) int {
			h := tr.ensureHost(L)
			id, err := h.Authenticate(context.Background(), core.Credentials{User: L.CheckString(1), Password: L.OptString(2, ""), Remote: "test"})
			if err != nil {
				L.Push(glua.LNil)
				L.Push(glua.LString(err.Error()))
				return 2
			}
			L.Push(lua.IdentityTable(L, id))
			return 1
		},
		"tick": func(L *glua.LState) int {
			h := tr.ensureHost(L)
			if err := h.RunTimers(context.Background(), L.CheckString(1)); err != nil {
				L.Push(glua.LString(err.Error()))
				return 1
			}
			return 0
		},
		"notify": func(L *glua.LState) int {
			h := tr.ensureHost(L)
			e := L.CheckTable(1)
			ev := api.Event{Type: str(e, "type", ""), LNM: str(e, "lnm", ""), User: str(e, "user", ""), Error: str(e, "error", ""),
				OK: glua.LVAsBool(e.RawGetString("ok")), Time: time.Now()}
			if ev.Type == "" {
				L.ArgError(1, "an event needs a type")
			}
			if d, ok := e.RawGetString("detail").(*glua.LTable); ok {
				ev.Detail = lua.StringMap(d)
			}
			if name := str(e, "vm", ""); name != "" {
				if vm, ok := tr.view.VM(name); ok {
					ev.VM = vm
				} else {
					L.ArgError(1, "no VM "+name+" in the fixture")
				}
			}
			if err := h.NotifyNow(context.Background(), ev); err != nil {
				L.Push(glua.LString(err.Error()))
				return 1
			}
			return 0
		},
		"actions": func(L *glua.LState) int {
			L.Push(tr.acts.table(L))
			return 1
		},
		"case": func(L *glua.LState) int {
			name := L.CheckString(1)
			fn := L.CheckFunction(2)
			tr.cases++
			L.Push(fn)
			if err := L.PCall(0, 0, nil); err != nil {
				tr.failed++
				fmt.Fprintf(tr.w, "FAIL %s: %s: %s\n", tr.file, name, lua.ErrMessage(err))
				if tr.logs.Len() > 0 {
					fmt.Fprintf(tr.w, "     log: %s", tr.logs.String())
				}
			} else {
				tr.passed++
				fmt.Fprintf(tr.w, "ok   %s: %s\n", tr.file, name)
			}
			tr.logs.Reset()
			return 0
		},
		"eq": func(L *glua.LState) int {
			a, b := L.Get(1), L.Get(2)
			if !deepEqual(a, b) {
				L.RaiseError("%s: expected %s, got %s", L.OptString(3, "eq"), show(b), show(a))
			}
			return 0
		},
		"ok": func(L *glua.LState) int {
			if !glua.LVAsBool(L.Get(1)) {
				L.RaiseError("%s", L.OptString(2, "assertion failed"))
			}
			return 0
		},
	}
	for k, f := range fns {
		t.RawSetString(k, L.NewFunction(f))
	}
	t.RawSetString("dir", glua.LString(tr.dir))
	L.SetGlobal("usher_test", t)
}

// decisionVMTable is VM i of a request as the chain left it.
func decisionVMTable(L *glua.LState, req *core.Request, d *core.Decision, i int) *glua.LTable {
	v, c := &req.VMs[i], &d.VMs[i]
	t := L.CreateTable(0, 10)
	t.RawSetString("name", glua.LString(v.Name))
	t.RawSetString("short", glua.LString(v.Short))
	t.RawSetString("owner", glua.LString(v.Owner))
	t.RawSetString("cluster", glua.LString(v.Cluster))
	setStr(t, "lnm", c.LNM)
	setStr(t, "target", c.Target)
	t.RawSetString("mem_mb", glua.LNumber(c.MemMB))
	t.RawSetString("vcpus", glua.LNumber(c.VCPUs))
	setStr(t, "state", string(v.State))
	t.RawSetString("data", strMap(L, c.Data))
	return t
}

// resultOf converts a request after the chain (its decision, and the
// chain's error) into a table.
func resultOf(L *glua.LState, req *core.Request, d *core.Decision, err error) *glua.LTable {
	t := L.NewTable()
	vms := L.CreateTable(d.Kept(), 0)
	byName := L.NewTable()
	n := 0
	for i := range req.VMs {
		if d.VMs[i].Dropped {
			continue
		}
		vt := decisionVMTable(L, req, d, i)
		n++
		vms.RawSetInt(n, vt)
		byName.RawSetString(req.VMs[i].Short, vt)
	}
	t.RawSetString("vms", vms)
	t.RawSetString("by_short", byName)
	dr := L.CreateTable(len(d.Dropped), 0)
	for i, x := range d.Dropped {
		e := L.NewTable()
		e.RawSetString("vm", glua.LString(x.VM))
		e.RawSetString("reason", glua.LString(x.Reason))
		e.RawSetString("by", glua.LString(x.By))
		dr.RawSetInt(i+1, e)
	}
	t.RawSetString("dropped", dr)
	tr := L.CreateTable(len(d.Trace), 0)
	for i, s := range d.Trace {
		e := L.NewTable()
		e.RawSetString("event", glua.LString(s.Event))
		e.RawSetString("handler", glua.LString(s.Handler))
		e.RawSetString("action", glua.LString(s.Action))
		e.RawSetString("detail", glua.LString(s.Detail))
		tr.RawSetInt(i+1, e)
	}
	t.RawSetString("trace", tr)
	var rej *core.RejectError
	if errors.As(err, &rej) {
		t.RawSetString("rejected", glua.LString(rej.Reason))
	}
	t.RawSetString("lnms", lua.StringList(L, d.LNMs))
	t.RawSetString("args", strMap(L, d.Args))
	setStr(t, "op", string(d.Op))
	return t
}

func deepEqual(a, b glua.LValue) bool {
	ta, ok1 := a.(*glua.LTable)
	tb, ok2 := b.(*glua.LTable)
	if !ok1 || !ok2 {
		if n1, ok := a.(glua.LNumber); ok {
			if n2, ok := b.(glua.LNumber); ok {
				return n1 == n2
			}
		}
		return a == b
	}
	eq := true
	count := 0
	ta.ForEach(func(k, v glua.LValue) {
		count++
		if !deepEqual(v, tb.RawGet(k)) {
			eq = false
		}
	})
	tb.ForEach(func(glua.LValue, glua.LValue) { count-- })
	return eq && count == 0
}

func show(v glua.LValue) string {
	t, ok := v.(*glua.LTable)
	if !ok {
		if s, ok := v.(glua.LString); ok {
			return fmt.Sprintf("%q", string(s))
		}
		return v.String()
	}
	var parts []string
	n := t.Len()
	for i := 1; i <= n; i++ {
		parts = append(parts, show(t.RawGetInt(i)))
	}
	var keys []string
	t.ForEach(func(k, val glua.LValue) {
		if kn, ok := k.(glua.LNumber); ok && int(kn) >= 1 && int(kn) <= n {
			return
		}
		keys = append(keys, fmt.Sprintf("%s=%s", lua.ToString(k), show(val)))
	})
	sort.Strings(keys)
	return "{" + strings.Join(append(parts, keys...), ", ") + "}"
}

// recorder is the test core.Actions: it records what timers ask for.
type recorder struct {
	mu  sync.Mutex
	log []map[string]any
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.log = nil
	r.mu.Unlock()
}

func (r *recorder) OpOn(_ context.Context, _ api.Identity, a api.OpArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "op", "op": string(a.Op), "vms": toAnys(a.VMs)})
	return &api.Result{Requested: len(a.VMs)}, nil
}

func (r *recorder) Migrate(_ context.Context, _ api.Identity, a api.MigrateArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "migrate", "vms": toAnys(a.VMs), "lnms": toAnys(a.LNMs)})
	return &api.Result{Requested: len(a.VMs)}, nil
}

// The node actions are recorded too; they succeed (a fence confirms).

func (r *recorder) SetLNMModeBy(name string, mode api.NodeMode, reason, _ string) (*api.LNM, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "lnm_mode", "lnm": name, "mode": string(mode), "reason": reason})
	return &api.LNM{Info: api.NodeInfo{Name: name}, Mode: mode, ModeReason: reason}, nil
}

func (r *recorder) SetLNMNotice(name, notice string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "lnm_notice", "lnm": name, "notice": notice})
	return nil
}

func (r *recorder) Fence(_ context.Context, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "fence", "lnm": name})
	return nil
}

func (r *recorder) Failover(_ context.Context, _ api.Identity, a api.MigrateArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "failover", "vms": toAnys(a.VMs), "lnms": toAnys(a.LNMs)})
	return &api.Result{Requested: len(a.VMs)}, nil
}

func toAnys(xs []string) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

func (r *recorder) table(L *glua.LState) *glua.LTable {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := L.CreateTable(len(r.log), 0)
	for i, e := range r.log {
		t.RawSetInt(i+1, lua.ToLua(L, e))
	}
	return t
}

func setStr(t *glua.LTable, k, v string) {
	if v != "" {
		t.RawSetString(k, glua.LString(v))
	}
}

func strMap(L *glua.LState, m map[string]string) *glua.LTable {
	t := L.CreateTable(0, len(m))
	for k, v := range m {
		t.RawSetString(k, glua.LString(v))
	}
	return t
}

// CheckTests compiles each *_test.lua file: a test is checked as a test
// (it runs only under `usher policy test`, with usher_test and fixtures),
// not as a policy script. Errors name file:line.
func CheckTests(files []string) []error {
	var errs []error
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		name := filepath.Base(f)
		chunk, err := parse.Parse(bytes.NewReader(src), name)
		if err == nil {
			_, err = glua.Compile(chunk, name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
	}
	return errs
}
