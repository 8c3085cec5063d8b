package lua

import (
	"fmt"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"
)

// lnmView is what usher.lnm and usher.lnms hand to Lua: a read-only view
// of one node's record, a copy taken when the query ran. Its info, status
// and status.usage parts are views on the same copy, made on first use and
// then reused. Placement reads a handful of fields of hundreds of candidate
// nodes per request; building three tables per node (gopher-lua keeps a map,
// a key list and an index map per table) was most of what usher.lnms cost.
type lnmView struct {
	n                   *api.LNM
	info, status, usage *glua.LUserData
}

type lnmInfoView struct{ v *lnmView }
type lnmStatusView struct{ v *lnmView }

func lnmValue(L *glua.LState, n *api.LNM) glua.LValue {
	ud := L.NewUserData()
	ud.Value = &lnmView{n: n}
	ud.Metatable = lnmMT(L, "usher.lnm")
	return ud
}

// lnmMT returns (building once per state) the metatable of one of the
// three view kinds.
func lnmMT(L *glua.LState, kind string) *glua.LTable {
	if mt, ok := L.G.Registry.RawGetString(kind).(*glua.LTable); ok {
		return mt
	}
	mt := L.CreateTable(0, 4)
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		ud := L.CheckUserData(1)
		k, _ := L.Get(2).(glua.LString)
		switch x := ud.Value.(type) {
		case *lnmView:
			L.Push(x.field(L, string(k)))
		case *lnmInfoView:
			L.Push(x.v.infoField(string(k)))
		case *lnmStatusView:
			L.Push(x.v.statusField(L, string(k)))
		default:
			L.Push(glua.LNil)
		}
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("%s is read-only (copy the fields you need into a table of your own)", describeLNM(L.CheckUserData(1)))
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *glua.LState) int {
		L.Push(glua.LString(describeLNM(L.CheckUserData(1))))
		return 1
	}))
	mt.RawSetString("__metatable", glua.LString("locked"))
	L.G.Registry.RawSetString(kind, mt)
	return mt
}

func describeLNM(ud *glua.LUserData) string {
	switch x := ud.Value.(type) {
	case *lnmView:
		return fmt.Sprintf("lnm %s", x.n.Info.Name)
	case *lnmInfoView:
		return fmt.Sprintf("lnm %s info", x.v.n.Info.Name)
	case *lnmStatusView:
		return fmt.Sprintf("lnm %s status", x.v.n.Info.Name)
	}
	return "lnm"
}

func (v *lnmView) field(L *glua.LState, k string) glua.LValue {
	n := v.n
	switch k {
	case "name":
		return glua.LString(n.Info.Name)
	case "connected":
		return glua.LBool(n.State == api.LNMConnected)
	case "state":
		return glua.LString(string(n.State))
	case "since":
		return unixf(n.Since)
	case "mode":
		return glua.LString(string(n.Mode))
	case "mode_reason":
		return optString(n.ModeReason)
	case "mode_since":
		if n.ModeSince.IsZero() {
			return glua.LNil
		}
		return unixf(n.ModeSince)
	case "notice":
		return optString(n.Notice)
	case "fenced":
		return glua.LBool(n.Fenced)
	case "info":
		if v.info == nil {
			v.info = L.NewUserData()
			v.info.Value = &lnmInfoView{v}
			v.info.Metatable = lnmMT(L, "usher.lnm.info")
		}
		return v.info
	case "status":
		if v.status == nil {
			v.status = L.NewUserData()
			v.status.Value = &lnmStatusView{v}
			v.status.Metatable = lnmMT(L, "usher.lnm.status")
		}
		return v.status
	}
	return glua.LNil
}

func (v *lnmView) infoField(k string) glua.LValue {
	i := &v.n.Info
	switch k {
	case "name":
		return glua.LString(i.Name)
	case "address":
		return optString(i.Address)
	case "driver":
		return glua.LString(i.Driver)
	case "cpus":
		return glua.LNumber(i.CPUs)
	case "mem_mb":
		return glua.LNumber(i.MemMB)
	case "hostname":
		return optString(i.Hostname)
	case "model":
		return optString(i.Model)
	case "guaranteed_cpus":
		if i.GuaranteedCPUs > 0 {
			return glua.LNumber(i.GuaranteedCPUs)
		}
		return glua.LNumber(i.CPUs)
	}
	return glua.LNil
}

func (v *lnmView) statusField(L *glua.LState, k string) glua.LValue {
	s := &v.n.Status
	switch k {
	case "vms":
		return glua.LNumber(s.VMs)
	case "free_mem_mb":
		return glua.LNumber(s.FreeMemMB)
	case "free_vcpus":
		return glua.LNumber(s.FreeVCPUs)
	case "free_guaranteed_vcpus":
		return glua.LNumber(s.FreeGuaranteedVCPUs)
	case "usage":
		if v.usage == nil {
			v.usage = L.NewUserData()
			v.usage.Value = &s.Usage
			v.usage.Metatable = usageMT(L)
		}
		return v.usage
	case "reported_at":
		return glua.LNumber(s.ReportedAt)
	}
	return glua.LNil
}
