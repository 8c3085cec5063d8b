package lua

import (
	"fmt"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

// vmView is a request VM as a request handler sees it: a userdata whose
// fields read and write the Go ReqVM directly for the length of one handler
// call. Requests of a thousand VMs pass through three or more handlers;
// building a table per VM for each of them, and reading it back, was most
// of the Lua cost of a start and much of the controller's garbage.
//
// Fields: name, short, owner, cluster and state are read-only; lnm, target,
// mem_mb, vcpus and data are writable (data is a table, made on first use
// and read back when the handler returns); any other field a script sets is
// kept for the rest of that call. A view used after its handler returned
// raises an error, so a stashed view cannot touch a later request.
type vmView struct {
	vm      *core.ReqVM
	live    bool
	changed bool
	data    *glua.LTable // vm.data once touched
	extra   *glua.LTable // the script's own fields
}

// newVMView wraps v for the current call.
func (ls *lstate) newVMView(v *core.ReqVM) *glua.LUserData {
	view := &vmView{vm: v, live: true}
	ls.views = append(ls.views, view)
	ud := ls.L.NewUserData()
	ud.Value = view
	ud.Metatable = vmViewMT(ls.L)
	return ud
}

// endViews invalidates the views of the call that ended.
func (ls *lstate) endViews() {
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

// viewOf returns the live view inside v, or nil.
func viewOf(v glua.LValue) *vmView {
	ud, ok := v.(*glua.LUserData)
	if !ok {
		return nil
	}
	view, _ := ud.Value.(*vmView)
	if view == nil || !view.live {
		return nil
	}
	return view
}

func checkView(L *glua.LState) *vmView {
	ud := L.CheckUserData(1)
	view, _ := ud.Value.(*vmView)
	if view == nil {
		L.ArgError(1, "not a request VM")
	}
	if !view.live {
		L.RaiseError("request VM %s used after its handler returned", view.vm.Name)
	}
	return view
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
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		view := checkView(L)
		v := view.vm
		key := L.Get(2)
		k, isStr := key.(glua.LString)
		if !isStr {
			L.Push(view.extraGet(key))
			return 1
		}
		switch k {
		case "name":
			L.Push(glua.LString(v.Name))
		case "short":
			L.Push(glua.LString(v.Short))
		case "owner":
			L.Push(glua.LString(v.Owner))
		case "cluster":
			L.Push(glua.LString(v.Cluster))
		case "lnm":
			L.Push(optString(v.LNM))
		case "target":
			L.Push(optString(v.Target))
		case "state":
			L.Push(optString(string(v.State)))
		case "mem_mb":
			L.Push(glua.LNumber(v.MemMB))
		case "vcpus":
			L.Push(glua.LNumber(v.VCPUs))
		case "data":
			if view.data == nil {
				view.data = strMap(L, v.Data)
			}
			L.Push(view.data)
		default:
			L.Push(view.extraGet(key))
		}
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		view := checkView(L)
		v := view.vm
		key, val := L.Get(2), L.Get(3)
		k, isStr := key.(glua.LString)
		if !isStr {
			view.extraSet(L, key, val)
			return 0
		}
		switch k {
		case "name", "short", "owner", "cluster", "state":
			L.RaiseError("vm.%s is read-only", string(k))
		case "lnm":
			if s := luaString(val); s != v.LNM {
				v.LNM, view.changed = s, true
			}
		case "target":
			if s := luaString(val); s != v.Target {
				v.Target, view.changed = s, true
			}
		case "mem_mb", "vcpus":
			n, ok := luaInt(val)
			if !ok {
				L.RaiseError("vm.%s must be a whole number, not %s", string(k), val.Type().String())
			}
			p := &v.MemMB
			if k == "vcpus" {
				p = &v.VCPUs
			}
			if n != *p {
				*p, view.changed = n, true
			}
		case "data":
			switch t := val.(type) {
			case *glua.LTable:
				view.data = t
			case *glua.LNilType:
				view.data = L.CreateTable(0, 0)
			default:
				L.RaiseError("vm.data must be a table, not %s", val.Type().String())
			}
		default:
			view.extraSet(L, key, val)
		}
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		view, _ := L.CheckUserData(1).Value.(*vmView)
		if view == nil {
			L.Push(glua.LString("vm"))
			return 1
		}
		L.Push(glua.LString(fmt.Sprintf("vm %s", view.vm.Name)))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	L.G.Registry.RawSetString("usher.reqvm", mt)
	return mt
}

func (view *vmView) extraGet(k glua.LValue) glua.LValue {
	if view.extra == nil {
		return glua.LNil
	}
	return view.extra.RawGet(k)
}

func (view *vmView) extraSet(L *glua.LState, k, v glua.LValue) {
	if view.extra == nil {
		view.extra = L.CreateTable(0, 2)
	}
	view.extra.RawSet(k, v)
}

// apply reads back what the view cannot write through (vm.data) and
// reports whether the handler changed the VM.
func (view *vmView) apply() bool {
	if view.data != nil {
		if nd := luaStrMap(view.data); !equalMaps(nd, view.vm.Data) {
			view.vm.Data, view.changed = nd, true
		}
	}
	return view.changed
}

// reqView is a request as a handler sees it: a userdata over the Go
// request for the length of one handler call, like vmView. Every handler
// of a start (authorize, quota, placement) got a fresh table of the
// request and another of the caller's identity, and gopher-lua gives each
// table with string keys two maps and a key list: a third of the
// controller's allocations per start.
//
// Fields: id, kind, user, all and dry_run are read-only; op and cluster
// are writable strings; vms, lnms and args are tables, made on first use
// and read back when the handler returns; drop is req:drop; any other
// field a script sets is kept for the rest of that call. user is a
// read-only view of the caller (identityView). pairs() does not list a
// view's fields.
type reqView struct {
	req     *core.Request
	live    bool
	changed bool            // op or cluster written
	user    *glua.LUserData // an identityView, made on first use
	vms     *glua.LTable
	lnms    *glua.LTable
	args    *glua.LTable
	extra   *glua.LTable
}

// reqViewOf returns the live request view inside v, or nil.
func reqViewOf(v glua.LValue) *reqView {
	ud, ok := v.(*glua.LUserData)
	if !ok {
		return nil
	}
	view, _ := ud.Value.(*reqView)
	if view == nil || !view.live {
		return nil
	}
	return view
}

func checkReq(L *glua.LState) *reqView {
	ud := L.CheckUserData(1)
	view, _ := ud.Value.(*reqView)
	if view == nil {
		L.ArgError(1, "not a request")
	}
	if !view.live {
		L.RaiseError("request %s used after its handler returned", describeReq(view.req))
	}
	return view
}

func describeReq(r *core.Request) string {
	if r.ID != "" {
		return fmt.Sprintf("%s %s", r.Kind, r.ID)
	}
	return string(r.Kind)
}

// vmsTable is req.vms, made on first use: the request's VMs as views.
func (ls *lstate) vmsTable(view *reqView) *glua.LTable {
	if view.vms == nil {
		view.vms = ls.L.CreateTable(len(view.req.VMs), 0)
		for i, v := range view.req.VMs {
			view.vms.RawSetInt(i+1, ls.newVMView(v))
		}
	}
	return view.vms
}

// reqMT is this state's metatable of request views (its functions close
// over ls: req.vms makes VM views of the current call).
func (ls *lstate) reqMT() *glua.LTable {
	if ls.reqMeta != nil {
		return ls.reqMeta
	}
	L := ls.L
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		view := checkReq(L)
		r := view.req
		key := L.Get(2)
		k, isStr := key.(glua.LString)
		if !isStr {
			L.Push(view.extraGet(key))
			return 1
		}
		switch k {
		case "id":
			L.Push(glua.LString(r.ID))
		case "kind":
			L.Push(glua.LString(string(r.Kind)))
		case "user":
			if view.user == nil {
				view.user = ls.identityValue(&r.User)
			}
			L.Push(view.user)
		case "op":
			L.Push(optString(string(r.Op)))
		case "cluster":
			L.Push(optString(r.Cluster))
		case "vms":
			L.Push(ls.vmsTable(view))
		case "lnms":
			if view.lnms == nil {
				view.lnms = strList(L, r.LNMs)
			}
			L.Push(view.lnms)
		case "args":
			if view.args == nil {
				view.args = strMap(L, r.Args)
			}
			L.Push(view.args)
		case "all":
			L.Push(glua.LBool(r.All))
		case "dry_run":
			L.Push(glua.LBool(r.DryRun))
		case "drop":
			L.Push(ls.dropFn)
		default:
			L.Push(view.extraGet(key))
		}
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		view := checkReq(L)
		r := view.req
		key, val := L.Get(2), L.Get(3)
		k, isStr := key.(glua.LString)
		if !isStr {
			view.extraSet(L, key, val)
			return 0
		}
		table := func() *glua.LTable {
			switch t := val.(type) {
			case *glua.LTable:
				return t
			case *glua.LNilType:
				return L.CreateTable(0, 0)
			}
			L.RaiseError("req.%s must be a table, not %s", string(k), val.Type().String())
			return nil
		}
		switch k {
		case "id", "kind", "user", "all", "dry_run", "drop":
			L.RaiseError("req.%s is read-only", string(k))
		case "op":
			s := luaString(val)
			op, err := core.ParseOp(s)
			if err != nil {
				L.RaiseError("req.op: %v", err)
			}
			if op != r.Op {
				r.Op, view.changed = op, true
			}
		case "cluster":
			if s := luaString(val); s != r.Cluster {
				r.Cluster, view.changed = s, true
			}
		case "vms":
			view.vms = table()
		case "lnms":
			view.lnms = table()
		case "args":
			view.args = table()
		default:
			view.extraSet(L, key, val)
		}
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		view, _ := L.CheckUserData(1).Value.(*reqView)
		if view == nil {
			L.Push(glua.LString("request"))
			return 1
		}
		L.Push(glua.LString("request " + describeReq(view.req)))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	ls.reqMeta = mt
	return mt
}

func (view *reqView) extraGet(k glua.LValue) glua.LValue {
	if view.extra == nil {
		return glua.LNil
	}
	return view.extra.RawGet(k)
}

func (view *reqView) extraSet(L *glua.LState, k, v glua.LValue) {
	if view.extra == nil {
		view.extra = L.CreateTable(0, 2)
	}
	view.extra.RawSet(k, v)
}

// identityView is req.user: a read-only view of the caller's identity
// (user, admin, groups). Authorization and quota read a field or two of
// it on every request; a table per handler was 3 % of a start's CPU.
type identityView struct {
	id     *core.Identity
	groups *glua.LTable // made on first use
}

func (ls *lstate) identityValue(id *core.Identity) *glua.LUserData {
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
