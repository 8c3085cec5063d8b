package lua

import (
	"fmt"
	"maps"
	"strings"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

// vmView is a request VM as a request handler sees it: a userdata over
// one VM of the Go request and its decision, for the length of one handler
// call. Requests of a thousand VMs pass through three or more handlers;
// building a table per VM for each of them, and reading it back, was most
// of the Lua cost of a start and much of the controller's garbage.
//
// Fields: name, short, owner, cluster and state read the request; lnm,
// target, mem_mb, vcpus and data read the decision, and may be assigned in
// the events core.FieldRules names (elsewhere the assignment raises at the
// script's line; data is then a read-only table). data is a table made on
// first use and read back when the handler returns; any other field a
// script sets is kept for the rest of that call. A view used after its
// handler returned raises an error, so a stashed view cannot touch a later
// request.
type vmView struct {
	ls      *lstate
	req     *core.Request
	d       *core.Decision
	i       int
	event   string
	live    bool
	changed bool
	data    *glua.LTable // vm.data once touched
	dataRW  bool         // data may change in this event
	extras               // the script's own fields
}

// A view is live for the length of its handler's call.
type liveView interface{ isLive() bool }

func (v *vmView) isLive() bool  { return v.live }
func (v *reqView) isLive() bool { return v.live }

// liveOf returns the live view of type T inside v, or nil.
func liveOf[T liveView](v glua.LValue) T {
	var none T
	ud, ok := v.(*glua.LUserData)
	if !ok {
		return none
	}
	view, ok := ud.Value.(T)
	if !ok || !view.isLive() {
		return none
	}
	return view
}

// checkLive returns argument 1 as a live view of type T (what names it in
// errors), raising with the script's line if it is something else or its
// handler returned.
func checkLive[T liveView](L *glua.LState, what string, name func(T) string) T {
	view, ok := L.CheckUserData(1).Value.(T)
	if !ok {
		L.ArgError(1, "not a "+what)
	}
	if !view.isLive() {
		L.RaiseError("%s %s used after its handler returned", what, name(view))
	}
	return view
}

// extras are the fields a script set on a view, kept for its call.
type extras struct{ extra *glua.LTable }

func (e *extras) extraGet(k glua.LValue) glua.LValue {
	if e.extra == nil {
		return glua.LNil
	}
	return e.extra.RawGet(k)
}

func (e *extras) extraSet(L *glua.LState, k, v glua.LValue) {
	if e.extra == nil {
		e.extra = L.CreateTable(0, 2)
	}
	e.extra.RawSet(k, v)
}

// vmKey names one VM of one decision.
type vmKey struct {
	d *core.Decision
	i int
}

// newVMView wraps VM i of req for the current call. Within a call there is
// one view per VM (register_vm's vm argument and req.vms[1] are the same
// userdata), so writes through either are seen by both and none is lost.
func (ls *lstate) newVMView(req *core.Request, d *core.Decision, i int, event string) *glua.LUserData {
	k := vmKey{d, i}
	if ud := ls.viewUD[k]; ud != nil {
		return ud
	}
	view := &vmView{ls: ls, req: req, d: d, i: i, event: event, live: true}
	ls.views = append(ls.views, view)
	ud := ls.L.NewUserData()
	ud.Value = view
	ud.Metatable = vmViewMT(ls.L)
	if ls.viewUD == nil {
		ls.viewUD = map[vmKey]*glua.LUserData{}
	}
	ls.viewUD[k] = ud
	return ud
}

// endViews invalidates the views of the call that ended.
func (ls *lstate) endViews() {
	clear(ls.viewUD)
	clear(ls.proxies)
	for _, v := range ls.views {
		v.live = false
	}
	clear(ls.views)
	ls.views = ls.views[:0]
	for _, r := range ls.reqs {
		r.live = false
	}
	clear(ls.reqs)
	ls.reqs = ls.reqs[:0]
}

// viewOf returns the live VM view inside v, or nil.
func viewOf(v glua.LValue) *vmView { return liveOf[*vmView](v) }

func checkView(L *glua.LState) *vmView {
	return checkLive(L, "request VM", func(v *vmView) string { return v.req.VMs[v.i].Name })
}

func optString(s string) glua.LValue {
	if s == "" {
		return glua.LNil
	}
	return glua.LString(s)
}

func vmViewMT(L *glua.LState) *glua.LTable {
	if mt, ok := L.G.Registry.RawGetString("usher.reqvm").(*glua.LTable); ok {
		return mt
	}
	mt := viewMT(L, checkView, vmGet, vmSet, func(v *vmView) string { return "vm " + v.req.VMs[v.i].Name })
	L.G.Registry.RawSetString("usher.reqvm", mt)
	return mt
}

// vmGet reads a VM view's own fields.
func vmGet(L *glua.LState, view *vmView, k string) (glua.LValue, bool) {
	v, d := &view.req.VMs[view.i], &view.d.VMs[view.i]
	switch k {
	case "name":
		return glua.LString(v.Name), true
	case "short":
		return glua.LString(v.Short), true
	case "owner":
		return glua.LString(v.Owner), true
	case "cluster":
		return glua.LString(v.Cluster), true
	case "state":
		return optString(string(v.State)), true
	case "lnm":
		return optString(d.LNM), true
	case "target":
		return optString(d.Target), true
	case "mem_mb":
		return glua.LNumber(d.MemMB), true
	case "vcpus":
		return glua.LNumber(d.VCPUs), true
	case "data":
		if view.data == nil {
			view.data = strMap(L, d.Data)
			if core.Writable(view.event, core.FieldData) == nil {
				view.dataRW = true
			} else {
				view.data = view.ls.readOnly(view.data, "vm.data", view.event)
			}
		}
		return view.data, true
	}
	return nil, false
}

// mayChange raises, at the script's line, unless field f may change in
// the view's event.
func mayChange(L *glua.LState, event, what string, f core.Field) {
	if err := core.Writable(event, f); err != nil {
		L.RaiseError("%s cannot change in %s (it may in: %s)", what, event, strings.Join(writableIn(f), ", "))
	}
}

// writableIn lists the events in which f may change.
func writableIn(f core.Field) []string {
	for _, r := range core.FieldRules() {
		if r.Field == f {
			return r.Events
		}
	}
	return []string{"none"}
}

// vmSet writes a VM view's own fields.
func vmSet(L *glua.LState, view *vmView, k string, val glua.LValue) bool {
	d := &view.d.VMs[view.i]
	switch k {
	case "name", "short", "owner", "cluster", "state":
		L.RaiseError("vm.%s is read-only", k)
	case "lnm":
		mayChange(L, view.event, "vm.lnm", core.FieldLNM)
		if s := luaString(val); s != d.LNM {
			d.LNM, view.changed = s, true
		}
	case "target":
		mayChange(L, view.event, "vm.target", core.FieldTarget)
		if s := luaString(val); s != d.Target {
			d.Target, view.changed = s, true
		}
	case "mem_mb", "vcpus":
		f := core.FieldMemMB
		p := &d.MemMB
		if k == "vcpus" {
			f, p = core.FieldVCPUs, &d.VCPUs
		}
		mayChange(L, view.event, "vm."+k, f)
		n, ok := luaInt(val)
		if !ok {
			L.RaiseError("vm.%s must be a whole number, not %s", k, val.Type().String())
		}
		if n != *p {
			*p, view.changed = n, true
		}
	case "data":
		mayChange(L, view.event, "vm.data", core.FieldData)
		switch t := val.(type) {
		case *glua.LTable:
			view.data = t
		case *glua.LNilType:
			view.data = L.CreateTable(0, 0)
		default:
			L.RaiseError("vm.data must be a table, not %s", val.Type().String())
		}
		view.dataRW = true
	default:
		return false
	}
	return true
}

// readOnly is a proxy of t whose assignments raise, naming what and the
// event; reads, #, pairs, ipairs, next, unpack and table.concat see t, and
// table.insert, table.remove, table.sort and rawset raise too (the
// sandbox's versions consult ls.proxies).
func (ls *lstate) readOnly(t *glua.LTable, what, event string) *glua.LTable {
	L := ls.L
	proxy := L.CreateTable(0, 0)
	if ls.proxies == nil {
		ls.proxies = map[*glua.LTable]proxyOf{}
	}
	ls.proxies[proxy] = proxyOf{t: t, msg: what + " cannot change in " + event}
	mt := L.CreateTable(0, 5)
	mt.RawSetString("__index", t)
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("%s cannot change in %s", what, event)
		return 0
	}))
	mt.RawSetString("__len", L.NewFunction(func(L *glua.LState) int {
		L.Push(glua.LNumber(t.Len()))
		return 1
	}))
	mt.RawSetString("__pairs", L.NewFunction(func(L *glua.LState) int {
		L.Push(L.GetGlobal("next"))
		L.Push(t)
		L.Push(glua.LNil)
		return 3
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	proxy.Metatable = mt
	return proxy
}

// viewMT builds the metatable of views of type T: get and set handle the
// view's own fields and report false for other keys, which are the
// script's own fields (extras) for the rest of the call; str names the
// view for tostring.
func viewMT[T interface {
	liveView
	own() *extras
}](L *glua.LState, check func(*glua.LState) T,
	get func(*glua.LState, T, string) (glua.LValue, bool),
	set func(*glua.LState, T, string, glua.LValue) bool,
	str func(T) string) *glua.LTable {
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		view := check(L)
		key := L.Get(2)
		if k, ok := key.(glua.LString); ok {
			if v, ok := get(L, view, string(k)); ok {
				L.Push(v)
				return 1
			}
		}
		L.Push(view.own().extraGet(key))
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		view := check(L)
		key, val := L.Get(2), L.Get(3)
		if k, ok := key.(glua.LString); ok && set(L, view, string(k), val) {
			return 0
		}
		view.own().extraSet(L, key, val)
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		view, ok := L.CheckUserData(1).Value.(T)
		if !ok {
			L.Push(glua.LString("view"))
			return 1
		}
		L.Push(glua.LString(str(view)))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	return mt
}

func (e *extras) own() *extras { return e }

// apply reads back what the view cannot write through (vm.data) and
// reports whether the handler changed the VM.
func (view *vmView) apply() bool {
	if view.data != nil && view.dataRW {
		d := &view.d.VMs[view.i]
		if nd := luaStrMap(view.data); !maps.Equal(nd, d.Data) {
			d.Data, view.changed = nd, true
		}
	}
	return view.changed
}

// reqView is a request as a handler sees it: a userdata over the Go
// request and its decision for the length of one handler call, like
// vmView. Every handler of a start (authorize, quota, placement) got a
// fresh table of the request and another of the caller's identity, and
// gopher-lua gives each table with string keys two maps and a key list: a
// third of the controller's allocations per start.
//
// Fields: id, kind, user, cluster, all, force and dry_run read the
// request and are read-only; op, vms, lnms and args read the decision and
// may be assigned in the events core.FieldRules names (elsewhere the
// assignment raises at the script's line, and the tables are read-only).
// vms, lnms and args are tables, made on first use and read back when the
// handler returns; drop is req:drop; any other field a script sets is kept
// for the rest of that call. user is a read-only view of the caller
// (identityView). pairs() does not list a view's fields.
type reqView struct {
	req     *core.Request
	d       *core.Decision
	event   string
	live    bool
	changed bool            // op written
	user    *glua.LUserData // an identityView, made on first use
	vms     *glua.LTable
	vmsRW   bool // vms is the writable table of views (not a proxy)
	lnms    *glua.LTable
	lnmsRW  bool
	args    *glua.LTable
	argsRW  bool
	extras  // the script's own fields
}

// reqViewOf returns the live request view inside v, or nil.
func reqViewOf(v glua.LValue) *reqView { return liveOf[*reqView](v) }

func checkReq(L *glua.LState) *reqView {
	return checkLive(L, "request", func(v *reqView) string { return describeReq(v.req) })
}

func describeReq(r *core.Request) string {
	if r.ID != "" {
		return fmt.Sprintf("%s %s", r.Kind, r.ID)
	}
	return string(r.Kind)
}

// vmsTable is req.vms, made on first use: the request's VMs still in it,
// as views (read-only where VMs may not be dropped).
func (ls *lstate) vmsTable(view *reqView) *glua.LTable {
	if view.vms == nil {
		t := ls.L.CreateTable(view.d.Kept(), 0)
		n := 0
		for i := range view.req.VMs {
			if !view.d.VMs[i].Dropped {
				n++
				t.RawSetInt(n, ls.newVMView(view.req, view.d, i, view.event))
			}
		}
		view.vms, view.vmsRW = t, core.Writable(view.event, core.FieldVMs) == nil
		if !view.vmsRW {
			view.vms = ls.readOnly(t, "req.vms", view.event)
		}
	}
	return view.vms
}

// reqMT is this state's metatable of request views (its functions close
// over ls: req.vms makes VM views of the current call).
func (ls *lstate) reqMT() *glua.LTable {
	if ls.reqMeta == nil {
		ls.reqMeta = viewMT(ls.L, checkReq, ls.reqGet, reqSet,
			func(v *reqView) string { return "request " + describeReq(v.req) })
	}
	return ls.reqMeta
}

// reqGet reads a request view's own fields.
func (ls *lstate) reqGet(L *glua.LState, view *reqView, k string) (glua.LValue, bool) {
	r, d := view.req, view.d
	switch k {
	case "id":
		return glua.LString(r.ID), true
	case "kind":
		return glua.LString(string(r.Kind)), true
	case "user":
		if view.user == nil {
			view.user = ls.identityValue(&r.User)
		}
		return view.user, true
	case "op":
		return optString(string(d.Op)), true
	case "cluster":
		return optString(r.Cluster), true
	case "vms":
		return ls.vmsTable(view), true
	case "lnms":
		if view.lnms == nil {
			view.lnms, view.lnmsRW = strList(L, d.LNMs), core.Writable(view.event, core.FieldLNMs) == nil
			if !view.lnmsRW {
				view.lnms = ls.readOnly(view.lnms, "req.lnms", view.event)
			}
		}
		return view.lnms, true
	case "args":
		if view.args == nil {
			view.args, view.argsRW = strMap(L, d.Args), core.Writable(view.event, core.FieldArgs) == nil
			if !view.argsRW {
				view.args = ls.readOnly(view.args, "req.args", view.event)
			}
		}
		return view.args, true
	case "all":
		return glua.LBool(r.All), true
	case "dry_run":
		return glua.LBool(r.DryRun), true
	case "force":
		return glua.LBool(r.Force), true
	case "drop":
		return ls.dropFn, true
	}
	return nil, false
}

// reqSet writes a request view's own fields.
func reqSet(L *glua.LState, view *reqView, k string, val glua.LValue) bool {
	d := view.d
	table := func() *glua.LTable {
		switch t := val.(type) {
		case *glua.LTable:
			return t
		case *glua.LNilType:
			return L.CreateTable(0, 0)
		}
		L.RaiseError("req.%s must be a table, not %s", k, val.Type().String())
		return nil
	}
	switch k {
	case "id", "kind", "user", "all", "dry_run", "force", "drop", "cluster":
		L.RaiseError("req.%s is read-only", k)
	case "op":
		mayChange(L, view.event, "req.op", core.FieldOp)
		op, err := api.ParseOp(luaString(val))
		if err != nil {
			L.RaiseError("req.op: %v", err)
		}
		if op != d.Op {
			d.Op, view.changed = op, true
		}
	case "vms":
		mayChange(L, view.event, "req.vms", core.FieldVMs)
		view.vms, view.vmsRW = table(), true
	case "lnms":
		mayChange(L, view.event, "req.lnms", core.FieldLNMs)
		view.lnms, view.lnmsRW = table(), true
	case "args":
		mayChange(L, view.event, "req.args", core.FieldArgs)
		view.args, view.argsRW = table(), true
	default:
		return false
	}
	return true
}

// identityView is req.user: a read-only view of the caller's identity
// (user, admin, groups). Authorization and quota read a field or two of
// it on every request; a table per handler was 3 % of a start's CPU.
type identityView struct {
	id     *api.Identity
	groups *glua.LTable // made on first use
}

func (ls *lstate) identityValue(id *api.Identity) *glua.LUserData {
	ud := ls.L.NewUserData()
	ud.Value = &identityView{id: id}
	ud.Metatable = ls.identityMT()
	return ud
}

func (ls *lstate) identityMT() *glua.LTable {
	if ls.idMeta != nil {
		return ls.idMeta
	}
	L := ls.L
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		view, _ := L.CheckUserData(1).Value.(*identityView)
		if view == nil {
			L.ArgError(1, "not an identity")
		}
		k, _ := L.Get(2).(glua.LString)
		switch k {
		case "user":
			L.Push(glua.LString(view.id.User))
		case "admin":
			L.Push(glua.LBool(view.id.Admin))
		case "groups":
			if view.groups == nil {
				view.groups = strList(L, view.id.Groups)
			}
			L.Push(view.groups)
		default:
			L.Push(glua.LNil)
		}
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("req.user is read-only")
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		view, _ := L.CheckUserData(1).Value.(*identityView)
		if view == nil {
			L.Push(glua.LString("identity"))
			return 1
		}
		L.Push(glua.LString("identity " + view.id.User))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	ls.idMeta = mt
	return mt
}

// proxyOf is what a read-only proxy stands for.
type proxyOf struct {
	t   *glua.LTable
	msg string
}

// deproxy returns the table a read-only proxy stands for (t itself if it
// is none), and the proxy's refusal.
func (ls *lstate) deproxy(t *glua.LTable) (*glua.LTable, string) {
	if p, ok := ls.proxies[t]; ok {
		return p.t, p.msg
	}
	return t, ""
}

// seeThroughProxies replaces the base and table functions that read or
// write a table raw: readers see what a proxy stands for, writers raise
// its refusal at the script's line.
func (ls *lstate) seeThroughProxies(L *glua.LState) {
	g := L.G.Global
	tbl := g.RawGetString("table").(*glua.LTable)
	reader := func(orig glua.LValue) *glua.LFunction {
		f := orig.(*glua.LFunction)
		return L.NewFunction(func(L *glua.LState) int {
			if t, ok := L.Get(1).(*glua.LTable); ok {
				if real, msg := ls.deproxy(t); msg != "" {
					L.Replace(1, real)
				}
			}
			L.Insert(f, 1)
			L.Call(L.GetTop()-1, glua.MultRet)
			return L.GetTop()
		})
	}
	writer := func(orig glua.LValue) *glua.LFunction {
		f := orig.(*glua.LFunction)
		return L.NewFunction(func(L *glua.LState) int {
			if t, ok := L.Get(1).(*glua.LTable); ok {
				if _, msg := ls.deproxy(t); msg != "" {
					L.RaiseError("%s", msg)
				}
			}
			L.Insert(f, 1)
			L.Call(L.GetTop()-1, glua.MultRet)
			return L.GetTop()
		})
	}
	g.RawSetString("next", reader(g.RawGetString("next")))
	g.RawSetString("unpack", reader(g.RawGetString("unpack")))
	g.RawSetString("rawget", reader(g.RawGetString("rawget")))
	g.RawSetString("rawset", writer(g.RawGetString("rawset")))
	tbl.RawSetString("concat", reader(tbl.RawGetString("concat")))
	tbl.RawSetString("insert", writer(tbl.RawGetString("insert")))
	tbl.RawSetString("remove", writer(tbl.RawGetString("remove")))
	tbl.RawSetString("sort", writer(tbl.RawGetString("sort")))
	tbl.RawSetString("maxn", reader(tbl.RawGetString("maxn")))
	if f, ok := tbl.RawGetString("getn").(*glua.LFunction); ok {
		tbl.RawSetString("getn", reader(f))
	}
}
