package lua

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

// Go values cross into Lua as plain tables keyed by the structs' JSON field
// names. The hot types (Request, ReqVM, VM, LNM) are converted by hand; that
// is several times faster than a JSON round trip (see BenchmarkConvert).

func lstr(s string) glua.LValue { return glua.LString(s) }

func setStr(t *glua.LTable, k, v string) {
	if v != "" {
		t.RawSetString(k, glua.LString(v))
	}
}

func strList(L *glua.LState, xs []string) *glua.LTable {
	t := L.CreateTable(len(xs), 0)
	for i, x := range xs {
		t.RawSetInt(i+1, glua.LString(x))
	}
	return t
}

func strMap(L *glua.LState, m map[string]string) *glua.LTable {
	t := L.CreateTable(0, len(m))
	for k, v := range m {
		t.RawSetString(k, glua.LString(v))
	}
	return t
}

func identityTable(L *glua.LState, id api.Identity) *glua.LTable {
	t := L.CreateTable(0, 3)
	t.RawSetString("user", glua.LString(id.User))
	if len(id.Groups) > 0 {
		t.RawSetString("groups", strList(L, id.Groups))
	} else {
		t.Metatable = lazyMT(L)
	}
	t.RawSetString("admin", glua.LBool(id.Admin))
	return t
}

// lazyMT is a per-state metatable whose __index creates the empty tables
// "data", "args", "lnms" and "groups" on first access, so conversions do
// not allocate them for every call (they are the bulk of the cost).
func lazyMT(L *glua.LState) *glua.LTable {
	if mt, ok := L.G.Registry.RawGetString("usher.lazy").(*glua.LTable); ok {
		return mt
	}
	mt := L.CreateTable(0, 2)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		t := L.CheckTable(1)
		switch k := L.Get(2).(type) {
		case glua.LString:
			switch k {
			case "data", "args", "lnms", "groups":
				// Usually only read (req.lnms on a request naming no
				// nodes): NewTable would make room for 32 entries of
				// each kind, about 2.5 KiB per access.
				nt := L.CreateTable(0, 0)
				t.RawSetString(string(k), nt)
				L.Push(nt)
				return 1
			}
		}
		L.Push(glua.LNil)
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	L.G.Registry.RawSetString("usher.lazy", mt)
	return mt
}

// reqValue is the request as the current handler of event sees it (a
// reqView over req and its decision).
func (ls *lstate) reqValue(req *core.Request, d *core.Decision, event string) *glua.LUserData {
	view := &reqView{req: req, d: d, event: event, live: true}
	ls.reqs = append(ls.reqs, view)
	ud := ls.L.NewUserData()
	ud.Value = view
	ud.Metatable = ls.reqMT()
	return ud
}

// applyReq writes what a handler left in its request view back into the
// decision: vm.data of every VM view of the call, the VMs no longer in
// req.vms (dropped, with the reason given to req:drop or "removed by
// <by>"), req.lnms and req.args. op and the VMs' other fields were written
// through. It reports whether anything changed.
func (ls *lstate) applyReq(v glua.LValue, req *core.Request, d *core.Decision, by string) (bool, error) {
	view := reqViewOf(v)
	if view == nil || view.req != req {
		return false, fmt.Errorf("not the handler's request")
	}
	changed := view.changed
	for _, vv := range ls.views {
		if vv.req == req {
			changed = vv.apply() || changed
		}
	}
	if vt := view.vms; vt != nil && view.vmsRW {
		n := vt.Len()
		kept := make([]bool, len(req.VMs))
		for i := 1; i <= n; i++ {
			e := vt.RawGetInt(i)
			vv := viewOf(e)
			if vv == nil || vv.req != req || vv.d != d {
				name := ""
				if t, ok := e.(*glua.LTable); ok {
					name = luaString(t.RawGetString("name"))
				}
				return false, fmt.Errorf("req.vms[%d]: handlers may not add VMs (%q)", i, name)
			}
			kept[vv.i] = true
		}
		for i := range req.VMs {
			if !kept[i] && !d.VMs[i].Dropped {
				reason := "removed by " + by
				if ls.call != nil && ls.call.drops != nil && ls.call.drops[req.VMs[i].Name] != "" {
					reason = ls.call.drops[req.VMs[i].Name]
				}
				d.Drop(req, i, reason, by)
				changed = true
			}
		}
	}
	if view.lnms != nil && view.lnmsRW {
		if nl := luaStrings(view.lnms); !slices.Equal(nl, d.LNMs) {
			d.LNMs, changed = nl, true
		}
	}
	if view.args != nil && view.argsRW {
		na := luaStrMap(view.args)
		if err := api.ValidArgs(na); err != nil {
			return false, fmt.Errorf("req.args: %v", err)
		}
		if !maps.Equal(na, d.Args) {
			d.Args, changed = na, true
		}
	}
	return changed, nil
}

// luaString is a Lua value written to a string field: strings, numbers and
// booleans as text, anything else "".
func luaString(v glua.LValue) string {
	switch x := v.(type) {
	case glua.LString:
		return string(x)
	case glua.LNumber:
		return x.String()
	case glua.LBool:
		if x {
			return "true"
		}
		return "false"
	}
	return ""
}

func luaInt(v glua.LValue) (int, bool) {
	switch x := v.(type) {
	case glua.LNumber:
		f := float64(x)
		if math.IsNaN(f) || math.IsInf(f, 0) || f > math.MaxInt32 || f < math.MinInt32 {
			return 0, false
		}
		return int(f), true
	case glua.LString:
		n, err := strconv.Atoi(string(x))
		return n, err == nil
	}
	return 0, false
}

func luaStrings(t *glua.LTable) []string {
	n := t.Len()
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, luaString(t.RawGetInt(i)))
	}
	return out
}

func luaStrMap(t *glua.LTable) map[string]string {
	var m map[string]string
	t.ForEach(func(k, v glua.LValue) {
		ks, ok := k.(glua.LString)
		if !ok {
			return
		}
		if m == nil {
			m = map[string]string{}
		}
		m[string(ks)] = luaString(v)
	})
	return m
}

func avgTable(L *glua.LState, a api.Avg) *glua.LTable {
	t := L.CreateTable(0, 3)
	t.RawSetString("m1", glua.LNumber(a.M1))
	t.RawSetString("m5", glua.LNumber(a.M5))
	t.RawSetString("m15", glua.LNumber(a.M15))
	return t
}

// usageValue is a read-only view of usage figures: indexing it by a
// measure name (cpu, mem_bytes, net_rx, net_tx, disk_read, disk_write)
// returns that measure's {m1, m5, m15}. Placement reads one measure of
// hundreds of candidate nodes per request; building all six tables for
// each of them was most of the cost of usher.lnms.
func usageValue(L *glua.LState, u api.Usage) glua.LValue {
	ud := L.NewUserData()
	ud.Value = &u
	ud.Metatable = usageMT(L)
	return ud
}

func usageMT(L *glua.LState) *glua.LTable {
	if mt, ok := L.G.Registry.RawGetString("usher.usage").(*glua.LTable); ok {
		return mt
	}
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		u, _ := L.CheckUserData(1).Value.(*api.Usage)
		if u == nil {
			L.Push(glua.LNil)
			return 1
		}
		var a *api.Avg
		switch L.CheckString(2) {
		case "cpu":
			a = &u.CPU
		case "mem_bytes":
			a = &u.MemBytes
		case "net_rx":
			a = &u.NetRx
		case "net_tx":
			a = &u.NetTx
		case "disk_read":
			a = &u.DiskRead
		case "disk_write":
			a = &u.DiskWrite
		}
		if a == nil {
			L.Push(glua.LNil)
			return 1
		}
		L.Push(avgTable(L, *a))
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("usage figures are read-only")
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		u, _ := L.CheckUserData(1).Value.(*api.Usage)
		if u == nil {
			L.Push(glua.LString("usage{}"))
			return 1
		}
		L.Push(glua.LString(fmt.Sprintf("usage{cpu=%.2f/%.2f/%.2f}", u.CPU.M1, u.CPU.M5, u.CPU.M15)))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	L.G.Registry.RawSetString("usher.usage", mt)
	return mt
}

func unixf(t time.Time) glua.LValue {
	if t.IsZero() {
		return glua.LNumber(0)
	}
	return glua.LNumber(float64(t.UnixNano()) / 1e9)
}

func vmTable(L *glua.LState, v *api.VM) *glua.LTable {
	t := L.CreateTable(0, 14)
	t.RawSetString("name", glua.LString(v.Name))
	t.RawSetString("short", glua.LString(v.Short))
	t.RawSetString("owner", glua.LString(v.Owner))
	t.RawSetString("cluster", glua.LString(v.Cluster))
	t.RawSetString("lnm", glua.LString(v.LNM))
	t.RawSetString("state", glua.LString(string(v.State)))
	setStr(t, "reason", v.Reason)
	t.RawSetString("mem_mb", glua.LNumber(v.MemMB))
	t.RawSetString("vcpus", glua.LNumber(v.VCPUs))
	t.RawSetString("data", strMap(L, v.Data))
	if v.Usage != nil {
		t.RawSetString("usage", usageValue(L, *v.Usage))
	}
	t.RawSetString("version", glua.LNumber(v.Version))
	t.RawSetString("created", unixf(v.Created))
	t.RawSetString("unmanaged", glua.LBool(v.Unmanage))
	return t
}

func clusterTable(L *glua.LState, c api.Cluster) *glua.LTable {
	t := L.CreateTable(0, 3)
	t.RawSetString("name", glua.LString(c.Name))
	t.RawSetString("owner", glua.LString(c.Owner))
	t.RawSetString("vms", strList(L, c.VMs))
	return t
}

func eventTable(L *glua.LState, ev api.Event) *glua.LTable {
	t := L.CreateTable(0, 10)
	t.RawSetString("type", glua.LString(ev.Type))
	t.RawSetString("seq", glua.LNumber(ev.Seq))
	t.RawSetString("time", unixf(ev.Time))
	if ev.VM != nil {
		t.RawSetString("vm", vmTable(L, ev.VM))
	}
	setStr(t, "lnm", ev.LNM)
	setStr(t, "user", ev.User)
	setStr(t, "req", ev.Req)
	t.RawSetString("ok", glua.LBool(ev.OK))
	setStr(t, "error", ev.Error)
	t.RawSetString("detail", strMap(L, ev.Detail))
	return t
}

// toLua converts plain Go data (config, store values): maps, slices,
// strings, numbers, bools; anything else via a JSON round trip.
func toLua(L *glua.LState, v any) glua.LValue {
	switch x := v.(type) {
	case nil:
		return glua.LNil
	case string:
		return glua.LString(x)
	case bool:
		return glua.LBool(x)
	case int:
		return glua.LNumber(x)
	case int64:
		return glua.LNumber(x)
	case float64:
		return glua.LNumber(x)
	case float32:
		return glua.LNumber(x)
	case json.Number:
		f, _ := x.Float64()
		return glua.LNumber(f)
	case []string:
		return strList(L, x)
	case map[string]string:
		return strMap(L, x)
	case api.StringMap:
		return strMap(L, x)
	case []any:
		t := L.CreateTable(len(x), 0)
		for i, e := range x {
			t.RawSetInt(i+1, toLua(L, e))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	}
	b, err := json.Marshal(v)
	if err != nil {
		return glua.LNil
	}
	var a any
	if json.Unmarshal(b, &a) != nil {
		return glua.LNil
	}
	return toLua(L, a)
}

// fromLua converts a Lua value to plain Go data. depth bounds nesting
// (store values may be flat tables only: depth 1).
func fromLua(v glua.LValue, depth int) (any, error) {
	switch x := v.(type) {
	case *glua.LNilType:
		return nil, nil
	case glua.LString:
		return string(x), nil
	case glua.LNumber:
		return float64(x), nil
	case glua.LBool:
		return bool(x), nil
	case *glua.LTable:
		if depth <= 0 {
			return nil, fmt.Errorf("nested tables are not allowed")
		}
		n := x.Len()
		var err error
		count := 0
		x.ForEach(func(glua.LValue, glua.LValue) { count++ })
		if n > 0 && n == count {
			arr := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				e, ferr := fromLua(x.RawGetInt(i), depth-1)
				if ferr != nil {
					return nil, ferr
				}
				arr = append(arr, e)
			}
			return arr, nil
		}
		m := map[string]any{}
		x.ForEach(func(k, val glua.LValue) {
			if err != nil {
				return
			}
			e, ferr := fromLua(val, depth-1)
			if ferr != nil {
				err = ferr
				return
			}
			m[luaString(k)] = e
		})
		return m, err
	}
	return nil, fmt.Errorf("cannot store a %s", v.Type().String())
}

// sortedKeys is used to make conversions deterministic where it matters.
func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
