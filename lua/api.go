package lua

import (
	"bufio"
	"context"
	"fmt"
	"github.com/usher-vm/usher/images"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"
	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/core"
)

// installAPI creates the usher module in ls. Functions close over ls; the
// view and actions are read from the host at call time.
func (ls *lstate) installAPI() {
	L := ls.L
	h := ls.v.h
	ls.rejectUD = L.NewUserData()
	ls.rejectUD.Value = &rejectMark{}
	ls.dropFn = L.NewFunction(ls.apiDrop)
	u := L.NewTable()
	fns := map[string]glua.LGFunction{
		"on": ls.apiOn, "every": ls.apiEvery, "off": ls.apiOff,
		"reject": ls.apiReject, "drop": ls.apiDrop,
		"vm": ls.apiVM, "vms": ls.apiVMs, "count": ls.apiCount, "lnm": ls.apiLNM, "lnms": ls.apiLNMs,
		"clusters": ls.apiClusters, "domain": ls.apiDomain,
		"op": ls.apiOp, "migrate": ls.apiMigrate,
		"reservation": ls.apiReservation, "reservations": ls.apiReservations,
		"lnm_mode": ls.apiLNMMode, "lnm_notice": ls.apiLNMNotice, "fence": ls.apiFence, "failover": ls.apiFailover,
		"time":         func(L *glua.LState) int { L.Push(unixf(time.Now())); return 1 },
		"bcrypt_check": ls.apiBcrypt, "read_htpasswd": ls.apiHtpasswd,
		"set_active": ls.apiSetActive,
		"images":     ls.apiImages, "image": ls.apiImage,
	}
	for k, f := range fns {
		u.RawSetString(k, L.NewFunction(f))
	}
	u.RawSetString("store", ls.storeTable())
	lg := L.NewTable()
	logger := h.log.With("script", ls.v.file)
	for name, lvl := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		lvl := lvl
		lg.RawSetString(name, L.NewFunction(func(L *glua.LState) int {
			msg := L.ToStringMeta(L.Get(1)).String()
			var attrs []any
			for i := 2; i+1 <= L.GetTop(); i += 2 {
				attrs = append(attrs, L.ToStringMeta(L.Get(i)).String(), luaAny(L.Get(i+1)))
			}
			logger.Log(context.Background(), lvl, msg, attrs...)
			return 0
		}))
	}
	u.RawSetString("log", lg)
	cfg := ls.v.config
	if cfg == nil {
		cfg = map[string]any{}
	}
	u.RawSetString("config", toLua(L, cfg))
	u.RawSetString("script", glua.LString(ls.v.name))
	L.SetGlobal("usher", u)
	lockTable(L, L.G.Global, "usher")
	ls.installModules() // Options.Modules: ldap, dns, sql, fs when configured (module.go)
}

func luaAny(v glua.LValue) any {
	switch x := v.(type) {
	case glua.LString:
		return string(x)
	case glua.LNumber:
		return float64(x)
	case glua.LBool:
		return bool(x)
	}
	return v.String()
}

func (ls *lstate) view() core.StateView { return ls.v.h.view.Load().view }

// parseInterval accepts "30s", "5m" or a number of seconds.
func parseInterval(v glua.LValue) (time.Duration, error) {
	var d time.Duration
	switch x := v.(type) {
	case glua.LNumber:
		d = time.Duration(float64(x) * float64(time.Second))
	case glua.LString:
		var err error
		d, err = time.ParseDuration(string(x))
		if err != nil {
			return 0, fmt.Errorf("bad interval %q: %v", string(x), err)
		}
	default:
		return 0, fmt.Errorf("interval must be a string like \"30s\" or a number of seconds")
	}
	if d < 10*time.Millisecond {
		return 0, fmt.Errorf("interval %v is below the 10ms minimum", d)
	}
	return d, nil
}

// register records a top-level registration.
func (ls *lstate) register(L *glua.LState, event string, fn *glua.LFunction, opts *glua.LTable, every time.Duration) int {
	if !ls.top {
		L.RaiseError("usher.on/usher.every may only be called while the script loads (top level); use Host.Register at run time")
	}
	order := 50
	name := event
	if opts != nil {
		if o, ok := opts.RawGetString("order").(glua.LNumber); ok {
			order = int(o)
		}
		if n, ok := opts.RawGetString("name").(glua.LString); ok && n != "" {
			name = string(n)
		}
	}
	if opts == nil || opts.RawGetString("name") == glua.LNil {
		k := 1
		for _, r := range ls.regs {
			if r.event == event {
				k++
			}
		}
		if k > 1 {
			name = fmt.Sprintf("%s#%d", event, k)
		}
	}
	for _, r := range ls.regs {
		if r.event == event && r.name == name && r.id >= 0 {
			L.RaiseError("duplicate handler name %q for event %q", name, event)
		}
	}
	id := len(ls.handlers)
	ls.handlers = append(ls.handlers, fn)
	ls.regs = append(ls.regs, regSpec{id: id, event: event, order: order, name: name, every: every})
	return id
}

func (ls *lstate) apiOn(L *glua.LState) int {
	event := L.CheckString(1)
	fn := L.CheckFunction(2)
	opts := L.OptTable(3, nil)
	if !knownEvent(event) || event == api.EvTimer {
		L.ArgError(1, fmt.Sprintf("unknown event %q (use usher.every for timers)", event))
	}
	L.Push(glua.LNumber(ls.register(L, event, fn, opts, 0)))
	return 1
}

func (ls *lstate) apiEvery(L *glua.LState) int {
	d, err := parseInterval(L.CheckAny(1))
	if err != nil {
		L.ArgError(1, err.Error())
	}
	fn := L.CheckFunction(2)
	opts := L.OptTable(3, nil)
	L.Push(glua.LNumber(ls.register(L, api.EvTimer, fn, opts, d)))
	return 1
}

// apiOff removes a registration: at load time from this load, at run time
// from the host (all states) until the script is reloaded.
func (ls *lstate) apiOff(L *glua.LState) int {
	id := L.CheckInt(1)
	if ls.top {
		for i := range ls.regs {
			if ls.regs[i].id == id {
				ls.regs = append(ls.regs[:i], ls.regs[i+1:]...)
				L.Push(glua.LTrue)
				return 1
			}
		}
		L.Push(glua.LFalse)
		return 1
	}
	h := ls.v.h
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hd := range ls.v.handlers {
		if hd.spec.id == id {
			h.offs[hd.stats] = true
			h.rebuildLocked()
			L.Push(glua.LTrue)
			return 1
		}
	}
	L.Push(glua.LFalse)
	return 1
}

func (ls *lstate) apiReject(L *glua.LState) int {
	ud := L.NewUserData()
	ud.Value = &rejectMark{reason: L.OptString(1, "rejected")}
	L.Push(ud)
	return 1
}

// apiDrop implements req:drop(name, reason) and usher.drop(req, name, reason).
func (ls *lstate) apiDrop(L *glua.LState) int {
	var vms *glua.LTable
	switch r := L.Get(1).(type) {
	case *glua.LUserData:
		view := checkReq(L)
		mayChange(L, view.event, "req.vms", core.FieldVMs)
		vms = ls.vmsTable(view)
	case *glua.LTable: // a request table a script built itself
		vms, _ = r.RawGetString("vms").(*glua.LTable)
	}
	if vms == nil {
		L.ArgError(1, "not a request")
	}
	name := L.CheckString(2)
	reason := L.OptString(3, "dropped")
	n := vms.Len()
	for i := 1; i <= n; i++ {
		e := vms.RawGetInt(i)
		match := false
		if view := viewOf(e); view != nil {
			match = view.req.VMs[view.i].Name == name
		} else if t, ok := e.(*glua.LTable); ok {
			match = luaString(t.RawGetString("name")) == name
		}
		if match {
			for j := i; j < n; j++ {
				vms.RawSetInt(j, vms.RawGetInt(j+1))
			}
			vms.RawSetInt(n, glua.LNil)
			if ls.call != nil {
				if ls.call.drops == nil {
					ls.call.drops = map[string]string{}
				}
				ls.call.drops[name] = reason
			}
			L.Push(glua.LTrue)
			return 1
		}
	}
	L.Push(glua.LFalse)
	return 1
}

func (ls *lstate) apiVM(L *glua.LState) int {
	v, ok := ls.view().VM(L.CheckString(1))
	if !ok {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(vmTable(L, v))
	return 1
}

// usher.vms{owner=, cluster=, lnm=}
func (ls *lstate) apiVMs(L *glua.LState) int {
	f := L.OptTable(1, L.NewTable())
	owner := luaString(f.RawGetString("owner"))
	cluster := luaString(f.RawGetString("cluster"))
	lnm := luaString(f.RawGetString("lnm"))
	var vms []*api.VM
	switch {
	case lnm != "":
		for _, v := range ls.view().VMsOn(lnm) {
			if (owner == "" || v.Owner == owner) && (cluster == "" || v.Cluster == cluster) {
				vms = append(vms, v)
			}
		}
	case owner != "":
		vms = ls.view().VMsOf(owner, cluster)
	default:
		for _, n := range ls.view().LNMs() {
			for _, v := range ls.view().VMsOn(n.Info.Name) {
				if cluster == "" || v.Cluster == cluster {
					vms = append(vms, v)
				}
			}
		}
	}
	ls.call.work(L, uint64(len(vms))*workPerObject)
	t := L.CreateTable(len(vms), 0)
	for i, v := range vms {
		t.RawSetInt(i+1, vmTable(L, v))
	}
	L.Push(t)
	return 1
}

// workPerObject is the work, in instructions, of handing one VM, node or
// cluster to a script (converting it, and the Go scan that found it).
const workPerObject = 64

func (ls *lstate) apiCount(L *glua.LState) int {
	L.Push(glua.LNumber(ls.view().CountOf(L.CheckString(1))))
	return 1
}

func (ls *lstate) apiLNM(L *glua.LState) int {
	n, ok := ls.view().LNM(L.CheckString(1))
	if !ok {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(lnmValue(L, n))
	return 1
}

// apiLNMs is usher.lnms([query]). With a query table {connected=, mem_mb=,
// vcpus=, order_by="load"|"free_mem"|"vms", limit=, names={...}} the
// filtering and ordering happen in Go and only the matches are converted,
// so placement stays cheap on sites with thousands of nodes.
func (ls *lstate) apiLNMs(L *glua.LState) int {
	var ns []*api.LNM
	if q, ok := L.Get(1).(*glua.LTable); ok {
		query := core.LNMQuery{
			Mode:       glua.LVAsString(q.RawGetString("mode")),
			Guaranteed: glua.LVAsBool(q.RawGetString("guaranteed")),
			Connected:  glua.LVAsBool(q.RawGetString("connected")),
			MemMB:      int(glua.LVAsNumber(q.RawGetString("mem_mb"))),
			VCPUs:      int(glua.LVAsNumber(q.RawGetString("vcpus"))),
			OrderBy:    glua.LVAsString(q.RawGetString("order_by")),
			Limit:      int(glua.LVAsNumber(q.RawGetString("limit"))),
		}
		if names, ok := q.RawGetString("names").(*glua.LTable); ok {
			names.ForEach(func(_, v glua.LValue) {
				if s, ok := v.(glua.LString); ok {
					query.Names = append(query.Names, string(s))
				}
			})
		}
		switch query.OrderBy {
		case "", "load", "free_mem", "vms":
		default:
			L.RaiseError("usher.lnms: order_by %q: want load, free_mem or vms", query.OrderBy)
		}
		if query.Mode != "" && query.Mode != "any" {
			if _, err := api.ParseNodeMode(query.Mode); err != nil {
				L.RaiseError("usher.lnms: %v (or \"any\")", err)
			}
		}
		if qv, ok := ls.view().(interface {
			QueryLNMs(core.LNMQuery) []*api.LNM
		}); ok {
			ns = qv.QueryLNMs(query)
		} else {
			ns = query.Apply(ls.view().LNMs())
		}
	} else {
		ns = ls.view().LNMs()
	}
	ls.call.work(L, uint64(len(ns))*workPerObject)
	t := L.CreateTable(len(ns), 0)
	for i, n := range ns {
		t.RawSetInt(i+1, lnmValue(L, n))
	}
	L.Push(t)
	return 1
}

func (ls *lstate) apiClusters(L *glua.LState) int {
	cs := ls.view().Clusters(L.OptString(1, ""))
	ls.call.work(L, uint64(len(cs))*workPerObject)
	t := L.CreateTable(len(cs), 0)
	for i, c := range cs {
		t.RawSetInt(i+1, clusterTable(L, c))
	}
	L.Push(t)
	return 1
}

func (ls *lstate) apiDomain(L *glua.LState) int {
	L.Push(glua.LString(ls.view().Domain()))
	return 1
}

// imageTable is an image of the store as scripts see it.
func imageTable(L *glua.LState, im api.Image) *glua.LTable {
	t := L.NewTable()
	t.RawSetString("name", glua.LString(im.Name))
	t.RawSetString("format", glua.LString(im.Format))
	t.RawSetString("boot", glua.LString(im.Boot))
	t.RawSetString("description", glua.LString(im.Description))
	t.RawSetString("min_mem_mb", glua.LNumber(im.MinMemMB))
	t.RawSetString("bytes", glua.LNumber(im.Bytes))
	return t
}

// apiImages lists the site's image store (policy.image_dir): a list of
// image tables, by name.
func (ls *lstate) apiImages(L *glua.LState) int {
	list, _ := images.Store{Dir: ls.v.h.opts.ImageDir}.List()
	out := L.NewTable()
	for _, im := range list {
		out.Append(imageTable(L, im.Info()))
	}
	L.Push(out)
	return 1
}

// apiImage returns one image of the store, or nil and why not.
func (ls *lstate) apiImage(L *glua.LState) int {
	im, err := images.Store{Dir: ls.v.h.opts.ImageDir}.Get(L.CheckString(1))
	if err != nil {
		L.Push(glua.LNil)
		L.Push(glua.LString(err.Error()))
		return 2
	}
	L.Push(imageTable(L, im.Info()))
	return 1
}

func (ls *lstate) checkAsync(L *glua.LState, what string) {
	if ls.call == nil || ls.call.kind != kindAsync {
		L.RaiseError("%s may only be called from timers and notification handlers (calling it from a request handler would deadlock)", what)
	}
}

func resultTable(L *glua.LState, r *api.Result) *glua.LTable {
	t := L.NewTable()
	if r == nil {
		return t
	}
	t.RawSetString("id", glua.LString(r.ID))
	t.RawSetString("requested", glua.LNumber(r.Requested))
	t.RawSetString("ok", glua.LNumber(r.OK()))
	done := L.CreateTable(len(r.Done), 0)
	for i, d := range r.Done {
		e := L.NewTable()
		e.RawSetString("name", glua.LString(d.Name))
		e.RawSetString("ok", glua.LBool(d.OK))
		setStr(e, "lnm", d.LNM)
		setStr(e, "state", string(d.State))
		setStr(e, "error", d.Error)
		done.RawSetInt(i+1, e)
	}
	t.RawSetString("done", done)
	dropped := L.CreateTable(len(r.Dropped), 0)
	for i, d := range r.Dropped {
		e := L.NewTable()
		e.RawSetString("vm", glua.LString(d.VM))
		e.RawSetString("reason", glua.LString(d.Reason))
		setStr(e, "by", d.By)
		dropped.RawSetInt(i+1, e)
	}
	t.RawSetString("dropped", dropped)
	return t
}

// actionTimeout bounds one usher.op / usher.migrate call.
const actionTimeout = 2 * time.Minute

// usher.op(opname, {vm names}, args) → result | nil, err; args.force =
// "true" forces a shutdown or reboot the guest does not honour in time.
func (ls *lstate) apiOp(L *glua.LState) int {
	ls.checkAsync(L, "usher.op")
	op, err := api.ParseOp(L.CheckString(1))
	if err != nil {
		L.ArgError(1, err.Error())
	}
	names := luaStrings(L.CheckTable(2))
	var args map[string]string
	if t := L.OptTable(3, nil); t != nil {
		args = luaStrMap(t)
	}
	// force ("true") is the op's force flag: a shutdown or reboot the
	// guest does not honour in time is forced.
	force := args["force"] == "true"
	delete(args, "force")
	var res *api.Result
	ls.call.pause(func() {
		ctx, cancel := context.WithTimeout(ls.v.ctx, actionTimeout)
		defer cancel()
		res, err = ls.v.h.view.Load().act.OpOn(ctx, core.SystemIdentity(), api.OpArgs{Op: op, VMs: names, Args: args, Force: force})
	})
	if err != nil {
		L.Push(glua.LNil)
		L.Push(glua.LString(err.Error()))
		return 2
	}
	L.Push(resultTable(L, res))
	return 1
}

// usher.migrate({vm names}, {lnm names}, args) → result | nil, err
func (ls *lstate) apiMigrate(L *glua.LState) int {
	ls.checkAsync(L, "usher.migrate")
	names := luaStrings(L.CheckTable(1))
	var lnms []string
	if t := L.OptTable(2, nil); t != nil {
		lnms = luaStrings(t)
	}
	var args map[string]string
	if t := L.OptTable(3, nil); t != nil {
		args = luaStrMap(t)
	}
	var res *api.Result
	var err error
	ls.call.pause(func() {
		ctx, cancel := context.WithTimeout(ls.v.ctx, actionTimeout)
		defer cancel()
		res, err = ls.v.h.view.Load().act.Migrate(ctx, core.SystemIdentity(), api.MigrateArgs{VMs: names, LNMs: lnms, Args: args})
	})
	if err != nil {
		L.Push(glua.LNil)
		L.Push(glua.LString(err.Error()))
		return 2
	}
	L.Push(resultTable(L, res))
	return 1
}

// reservationView is a state view that knows reservations.
type reservationView interface {
	Reservation(id string) (*api.Reservation, bool)
	Reservations(owner string) []api.Reservation
}

// reservationTable is what Lua sees of a reservation: its record, what
// its VMs use on each node (used) and what is left of it there (unused).
func reservationTable(L *glua.LState, r *api.Reservation) *glua.LTable {
	t := L.CreateTable(0, 16)
	t.RawSetString("id", glua.LString(r.ID))
	t.RawSetString("owner", glua.LString(r.Owner))
	setStr(t, "cluster", r.Cluster)
	t.RawSetString("mem_mb", glua.LNumber(r.MemMB))
	t.RawSetString("vcpus", glua.LNumber(r.VCPUs))
	t.RawSetString("start", unixf(r.Start))
	t.RawSetString("end", unixf(r.End))
	t.RawSetString("on_end", glua.LString(r.OnEnd))
	t.RawSetString("state", glua.LString(r.State))
	setStr(t, "by", r.By)
	lnms, vms := L.CreateTable(len(r.LNMs), 0), L.CreateTable(len(r.VMs), 0)
	used, unused := L.CreateTable(0, len(r.LNMs)), L.CreateTable(0, len(r.LNMs))
	use := func(mem, cpus int) *glua.LTable {
		u := L.CreateTable(0, 2)
		u.RawSetString("mem_mb", glua.LNumber(mem))
		u.RawSetString("vcpus", glua.LNumber(cpus))
		return u
	}
	for i, n := range r.LNMs {
		lnms.RawSetInt(i+1, glua.LString(n))
		u := r.Used[n]
		used.RawSetString(n, use(u.MemMB, u.VCPUs))
		unused.RawSetString(n, use(max(r.MemMB-u.MemMB, 0), max(r.VCPUs-u.VCPUs, 0)))
	}
	for i, n := range r.VMs {
		vms.RawSetInt(i+1, glua.LString(n))
	}
	t.RawSetString("lnms", lnms)
	t.RawSetString("vms", vms)
	t.RawSetString("used", used)
	t.RawSetString("unused", unused)
	return t
}

// usher.reservation(id) → reservation | nil
func (ls *lstate) apiReservation(L *glua.LState) int {
	rv, ok := ls.view().(reservationView)
	if !ok {
		L.Push(glua.LNil)
		return 1
	}
	r, found := rv.Reservation(L.CheckString(1))
	if !found {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(reservationTable(L, r))
	return 1
}

// usher.reservations([owner]) → {reservation...}
func (ls *lstate) apiReservations(L *glua.LState) int {
	var list []api.Reservation
	if rv, ok := ls.view().(reservationView); ok {
		list = rv.Reservations(L.OptString(1, ""))
	}
	ls.call.work(L, uint64(len(list))*workPerObject)
	t := L.CreateTable(len(list), 0)
	for i := range list {
		t.RawSetInt(i+1, reservationTable(L, &list[i]))
	}
	L.Push(t)
	return 1
}

// nodeActions returns the controller's node actions, raising when there
// are none (a view without a controller).
func (ls *lstate) nodeActions(L *glua.LState, what string) core.NodeActions {
	ls.checkAsync(L, what)
	na, ok := ls.v.h.view.Load().act.(core.NodeActions)
	if !ok {
		L.RaiseError("%s: no controller bound (node actions unavailable)", what)
	}
	return na
}

// pushErr returns nil, err to Lua.
func pushErr(L *glua.LState, err error) int {
	L.Push(glua.LNil)
	L.Push(glua.LString(err.Error()))
	return 2
}

// usher.lnm_mode(name, mode, reason) → lnm | nil, err: isolate ("isolated"),
// drain ("draining") or restore ("active") a node as this script.
func (ls *lstate) apiLNMMode(L *glua.LState) int {
	na := ls.nodeActions(L, "usher.lnm_mode")
	name, mode, reason := L.CheckString(1), L.CheckString(2), L.OptString(3, "")
	var n *api.LNM
	var err error
	ls.call.pause(func() { n, err = na.SetLNMModeBy(name, api.NodeMode(mode), reason, "policy "+ls.v.name) })
	if err != nil {
		return pushErr(L, err)
	}
	L.Push(lnmValue(L, n))
	return 1
}

// usher.lnm_notice(name, text) → true | nil, err: what this script reports
// about a node (shown by lnms, sent as an lnm_mode event when it changed).
func (ls *lstate) apiLNMNotice(L *glua.LState) int {
	na := ls.nodeActions(L, "usher.lnm_notice")
	name, text := L.CheckString(1), L.CheckString(2)
	var err error
	ls.call.pause(func() { err = na.SetLNMNotice(name, text) })
	if err != nil {
		return pushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

// usher.fence(name) → true | nil, err: run the site's fencing command
// against a lost node (blocks until it confirms, fails or times out).
func (ls *lstate) apiFence(L *glua.LState) int {
	na := ls.nodeActions(L, "usher.fence")
	name := L.CheckString(1)
	var err error
	ls.call.pause(func() { err = na.Fence(ls.v.ctx, name) })
	if err != nil {
		return pushErr(L, err)
	}
	L.Push(glua.LTrue)
	return 1
}

// usher.failover({vm names}, {lnm names}) → result | nil, err: restart lost
// VMs of fenced nodes elsewhere (the migrate_request chain, kind
// "failover", chooses their nodes).
func (ls *lstate) apiFailover(L *glua.LState) int {
	na := ls.nodeActions(L, "usher.failover")
	names := luaStrings(L.CheckTable(1))
	var lnms []string
	if t := L.OptTable(2, nil); t != nil {
		lnms = luaStrings(t)
	}
	var res *api.Result
	var err error
	ls.call.pause(func() {
		ctx, cancel := context.WithTimeout(ls.v.ctx, actionTimeout)
		defer cancel()
		res, err = na.Failover(ctx, core.SystemIdentity(), api.MigrateArgs{VMs: names, LNMs: lnms})
	})
	if err != nil {
		return pushErr(L, err)
	}
	L.Push(resultTable(L, res))
	return 1
}

// maxBcryptCost bounds the work one password check may take.
const maxBcryptCost = 14

// usher.bcrypt_check(hash, password [, like]) → whether password matches
// hash. With hash nil (no such user) it does the same work against a
// stand-in of like's cost (default 10) and answers false, so an unknown
// user costs what a wrong password costs. A password longer than the 72
// bytes bcrypt reads never matches.
func (ls *lstate) apiBcrypt(L *glua.LState) int {
	pw := L.CheckString(2)
	hash := ""
	if s, ok := L.Get(1).(glua.LString); ok {
		hash = string(s)
	}
	if pw == "" || len(pw) > 72 {
		L.Push(glua.LFalse)
		return 1
	}
	if hash == "" {
		cost := bcrypt.DefaultCost
		if like, ok := L.Get(3).(glua.LString); ok {
			if c, err := bcrypt.Cost([]byte(like)); err == nil && c <= maxBcryptCost {
				cost = c
			}
		}
		stand := ls.v.h.standIn(cost)
		ls.call.pause(func() { bcrypt.CompareHashAndPassword(stand, []byte(pw)) })
		L.Push(glua.LFalse)
		return 1
	}
	if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost > maxBcryptCost {
		L.Push(glua.LFalse)
		return 1
	}
	var err error
	ls.call.pause(func() { err = bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) })
	L.Push(glua.LBool(err == nil))
	return 1
}

// maxHtpasswd bounds the file read_htpasswd accepts.
const maxHtpasswd = 4 << 20

// resolve makes a script's path absolute (relative to its directory) and
// follows symbolic links.
func (ls *lstate) resolve(p string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(ls.v.dir, p)
	}
	p = filepath.Clean(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// mayRead reports whether the script may read path: only files the site's
// configuration names, in policy.files or in the script's own
// policy.config section (auth_htpasswd's file, say).
func (ls *lstate) mayRead(path string) bool {
	want := ls.resolve(path)
	for _, f := range ls.v.h.opts.Files {
		if ls.resolve(f) == want {
			return true
		}
	}
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if !found && x != "" && ls.resolve(x) == want {
				found = true
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(map[string]any(ls.v.config))
	return found
}

// usher.read_htpasswd(path) → {user=hash}, {user={groups}}
func (ls *lstate) apiHtpasswd(L *glua.LState) int {
	p := L.CheckString(1)
	if !ls.mayRead(p) {
		L.Push(glua.LNil)
		L.Push(glua.LString(fmt.Sprintf("%s: not a file the site configuration names for %s (policy.files, or this script's policy.config)", p, ls.v.file)))
		return 2
	}
	p = ls.resolve(p)
	f, err := os.Open(p)
	if err != nil {
		L.Push(glua.LNil)
		L.Push(glua.LString(err.Error()))
		return 2
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() > maxHtpasswd {
		L.Push(glua.LNil)
		L.Push(glua.LString("not a regular file under 4 MB: " + p))
		return 2
	}
	users := L.NewTable()
	groups := L.NewTable()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) < 2 || parts[0] == "" {
			continue
		}
		users.RawSetString(parts[0], glua.LString(parts[1]))
		var gs []string
		if len(parts) == 3 {
			for _, g := range strings.Split(parts[2], ",") {
				if g = strings.TrimSpace(g); g != "" {
					gs = append(gs, g)
				}
			}
		}
		groups.RawSetString(parts[0], strList(L, gs))
	}
	L.Push(users)
	L.Push(groups)
	return 2
}

// usher.set_active(event, target, on): target is a script or handler name;
// event "" (or nil) switches every event of script target.
func (ls *lstate) apiSetActive(L *glua.LState) int {
	if ls.top {
		L.RaiseError("usher.set_active may not be called while the script loads")
	}
	ev := L.OptString(1, "")
	target := L.CheckString(2)
	on := L.ToBool(3)
	if ev != "" && !knownEvent(ev) {
		L.ArgError(1, fmt.Sprintf("unknown event %q", ev))
	}
	ls.v.h.SetActive(ev, target, on)
	return 0
}

// storeTable is usher.store: get, set, delete, cas, incr and list over
// the host's store. Waiting for the database costs the handler neither
// instructions nor backstop time; what it stores costs work by size.
func (ls *lstate) storeTable() *glua.LTable {
	L := ls.L
	st := ls.v.h.kv
	raise := func(L *glua.LState, err error) {
		L.RaiseError("store: %v", err)
	}
	ttlArg := func(L *glua.LState, n int) time.Duration {
		if L.Get(n) == glua.LNil {
			return 0
		}
		d, err := parseInterval(L.Get(n))
		if err != nil {
			L.ArgError(n, err.Error())
		}
		return d
	}
	value := func(L *glua.LState, n int) any {
		v, err := fromLua(L.Get(n), 1)
		if err != nil {
			L.ArgError(n, err.Error())
		}
		return v
	}
	fns := map[string]glua.LGFunction{
		// usher.store.get(key) → value or nil
		"get": func(L *glua.LState) int {
			var v any
			var err error
			ls.call.pause(func() { v, err = st.Get(L.CheckString(1)) })
			if err != nil {
				raise(L, err)
			}
			L.Push(toLua(L, v))
			return 1
		},
		// usher.store.set(key, value [, ttl]): nil deletes
		"set": func(L *glua.LState) int {
			k, v, ttl := L.CheckString(1), value(L, 2), ttlArg(L, 3)
			ls.call.work(L, uint64(len(k))/64+1)
			var err error
			ls.call.pause(func() { err = st.Set(ls.v.name, k, v, ttl) })
			if err != nil {
				raise(L, err)
			}
			return 0
		},
		// usher.store.delete(key)
		"delete": func(L *glua.LState) int {
			var err error
			ls.call.pause(func() { err = st.Delete(ls.v.name, L.CheckString(1)) })
			if err != nil {
				raise(L, err)
			}
			return 0
		},
		// usher.store.cas(key, old, new [, ttl]) → whether it swapped
		"cas": func(L *glua.LState) int {
			k, old, v, ttl := L.CheckString(1), value(L, 2), value(L, 3), ttlArg(L, 4)
			var ok bool
			var err error
			ls.call.pause(func() { ok, err = st.CAS(ls.v.name, k, old, v, ttl) })
			if err != nil {
				raise(L, err)
			}
			L.Push(glua.LBool(ok))
			return 1
		},
		// usher.store.incr(key [, delta]) → the new value
		"incr": func(L *glua.LState) int {
			k, d := L.CheckString(1), float64(L.OptNumber(2, 1))
			var n float64
			var err error
			ls.call.pause(func() { n, err = st.Incr(ls.v.name, k, d) })
			if err != nil {
				raise(L, err)
			}
			L.Push(glua.LNumber(n))
			return 1
		},
		// usher.store.list(prefix [, {after=, limit=}]) → {key = value}, last key
		"list": func(L *glua.LState) int {
			prefix := L.CheckString(1)
			after, limit := "", 1000
			if o := L.OptTable(2, nil); o != nil {
				after = luaString(o.RawGetString("after"))
				if n, ok := luaInt(o.RawGetString("limit")); ok && n > 0 {
					limit = min(n, 10000)
				}
			}
			var keys []string
			var vals []any
			var err error
			ls.call.pause(func() { keys, vals, err = st.List(prefix, after, limit) })
			if err != nil {
				raise(L, err)
			}
			ls.call.work(L, uint64(len(keys))*workPerObject)
			t := L.CreateTable(0, len(keys))
			for i, k := range keys {
				t.RawSetString(k, toLua(L, vals[i]))
			}
			L.Push(t)
			if len(keys) == limit {
				L.Push(glua.LString(keys[len(keys)-1]))
				return 2
			}
			return 1
		},
	}
	t := L.CreateTable(0, len(fns))
	for k, f := range fns {
		t.RawSetString(k, L.NewFunction(f))
	}
	return t
}
