package policytool

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/lua"
)

// FixtureView is the state policy tests run against
// (usher_test.fixture): an in-memory core.StateView (coretest.View) that
// a test's Lua table can replace. It is safe for concurrent use.
type FixtureView struct {
	*coretest.View
	mu  sync.RWMutex
	res map[string]api.Reservation
}

// NewFixtureView returns an empty view with domain "usher.test".
func NewFixtureView() *FixtureView { return &FixtureView{View: coretest.NewView("usher.test")} }

// Reservation implements usher.reservation for fixtures.
func (f *FixtureView) Reservation(id string) (*api.Reservation, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r, ok := f.res[id]
	if !ok {
		return nil, false
	}
	return &r, true
}

// Reservations implements usher.reservations for fixtures.
func (f *FixtureView) Reservations(owner string) []api.Reservation {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []api.Reservation
	for _, r := range f.res {
		if owner == "" || r.Owner == owner {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func num(t *glua.LTable, k string, def float64) float64 {
	if n, ok := t.RawGetString(k).(glua.LNumber); ok {
		return float64(n)
	}
	return def
}

func str(t *glua.LTable, k, def string) string {
	if s := lua.ToString(t.RawGetString(k)); s != "" {
		return s
	}
	return def
}

// set replaces the fixture from usher_test.fixture{domain=, lnms=, vms=}.
func (f *FixtureView) set(t *glua.LTable) error {
	domain := str(t, "domain", "usher.test")
	var lnms []*api.LNM
	var vms []*api.VM
	if lt, ok := t.RawGetString("lnms").(*glua.LTable); ok {
		for i := 1; i <= lt.Len(); i++ {
			e, ok := lt.RawGetInt(i).(*glua.LTable)
			if !ok {
				return fmt.Errorf("lnms[%d] is not a table", i)
			}
			name := str(e, "name", "")
			if name == "" {
				return fmt.Errorf("lnms[%d] has no name", i)
			}
			cpus := int(num(e, "cpus", 4))
			mem := int(num(e, "mem_mb", 8192))
			cpu := api.Avg{}
			if c, ok := e.RawGetString("cpu").(glua.LNumber); ok {
				cpu = api.Avg{M1: float64(c), M5: float64(c), M15: float64(c)}
			}
			cpu.M1 = num(e, "cpu_m1", cpu.M1)
			cpu.M5 = num(e, "cpu_m5", cpu.M5)
			cpu.M15 = num(e, "cpu_m15", cpu.M15)
			lnms = append(lnms, &api.LNM{
				Info: api.NodeInfo{Name: name, Driver: "sim", CPUs: cpus, MemMB: mem, Address: name + ":7000"},
				Status: api.NodeStatus{VMs: int(num(e, "vms", 0)), FreeMemMB: int(num(e, "free_mem_mb", float64(mem))),
					FreeVCPUs: int(num(e, "free_vcpus", float64(cpus))), Usage: api.Usage{CPU: cpu}, ReportedAt: time.Now().UnixMilli(),
					FreeGuaranteedVCPUs: int(num(e, "free_guaranteed_vcpus", num(e, "free_vcpus", float64(cpus))))},
				State:      api.LNMState(str(e, "state", string(api.LNMConnected))),
				Since:      time.Now().Add(-time.Duration(num(e, "since_s", 0) * float64(time.Second))),
				Mode:       api.NodeMode(str(e, "mode", string(api.ModeActive))),
				ModeReason: str(e, "mode_reason", ""),
				Notice:     str(e, "notice", ""),
				Fenced:     glua.LVAsBool(e.RawGetString("fenced")),
			})
		}
	}
	if vt, ok := t.RawGetString("vms").(*glua.LTable); ok {
		for i := 1; i <= vt.Len(); i++ {
			e, ok := vt.RawGetInt(i).(*glua.LTable)
			if !ok {
				return fmt.Errorf("vms[%d] is not a table", i)
			}
			v := &api.VM{Short: str(e, "short", ""), Owner: str(e, "owner", ""), Name: str(e, "name", ""),
				LNM: str(e, "lnm", ""), State: api.VMState(str(e, "state", string(api.StateRunning))),
				MemMB: int(num(e, "mem_mb", 512)), VCPUs: int(num(e, "vcpus", 1)), Created: time.Now()}
			if v.Name == "" {
				if v.Short == "" || v.Owner == "" {
					return fmt.Errorf("vms[%d] needs name or short and owner", i)
				}
				v.Name = api.FullName(v.Short, v.Owner, domain)
			} else if v.Short == "" {
				v.Short, v.Owner, _ = api.ParseFullName(v.Name, domain)
			}
			v.Cluster = str(e, "cluster", api.ClusterOf(v.Short))
			if c, ok := e.RawGetString("cpu").(glua.LNumber); ok {
				v.Usage = &api.Usage{CPU: api.Avg{M1: float64(c), M5: float64(c), M15: float64(c)}}
			}
			if d, ok := e.RawGetString("data").(*glua.LTable); ok {
				v.Data = lua.StringMap(d)
			}
			vms = append(vms, v)
		}
	}
	res := map[string]api.Reservation{}
	if rt, ok := t.RawGetString("reservations").(*glua.LTable); ok {
		for i := 1; i <= rt.Len(); i++ {
			e, ok := rt.RawGetInt(i).(*glua.LTable)
			if !ok {
				return fmt.Errorf("reservations[%d] is not a table", i)
			}
			now := time.Now()
			r := api.Reservation{ID: str(e, "id", ""), Owner: str(e, "owner", ""), Cluster: str(e, "cluster", ""),
				MemMB: int(num(e, "mem_mb", 0)), VCPUs: int(num(e, "vcpus", 0)), State: str(e, "state", api.ResActive),
				OnEnd: str(e, "on_end", api.OnEndShutdown), Start: now.Add(-time.Hour),
				End: now.Add(time.Duration(num(e, "end_s", 3600) * float64(time.Second)))}
			if r.ID == "" || r.Owner == "" {
				return fmt.Errorf("reservations[%d] needs id and owner", i)
			}
			if l, ok := e.RawGetString("lnms").(*glua.LTable); ok {
				l.ForEach(func(_, v glua.LValue) { r.LNMs = append(r.LNMs, v.String()) })
			}
			// Its VMs and what they use: the fixture VMs whose data names it.
			for _, v := range vms {
				if v.Data[api.DataReservation] != r.ID {
					continue
				}
				r.VMs = append(r.VMs, v.Name)
				if v.State == api.StateRunning || v.State == api.StatePaused {
					if r.Used == nil {
						r.Used = map[string]api.ReservationUse{}
					}
					u := r.Used[v.LNM]
					u.MemMB += v.MemMB
					u.VCPUs += v.VCPUs
					r.Used[v.LNM] = u
				}
			}
			res[r.ID] = r
		}
	}
	f.mu.Lock()
	f.res = res
	f.mu.Unlock()
	f.Replace(domain, lnms, vms)
	return nil
}

// request builds a core.Request from a test's Lua table.
func (f *FixtureView) request(event string, t *glua.LTable) (*core.Request, *core.Decision, error) {
	req := &core.Request{ID: str(t, "id", "test-req")}
	switch event {
	case api.EvStartRequest:
		req.Kind = core.KindStart
	case api.EvOpRequest:
		req.Kind = core.KindOp
	case api.EvMigrateRequest:
		req.Kind = core.KindMigrate
	default:
		req.Kind = core.KindList
	}
	if k := str(t, "kind", ""); k != "" {
		req.Kind = core.RequestKind(k)
	}
	switch u := t.RawGetString("user").(type) {
	case glua.LString:
		req.User = api.Identity{User: string(u)}
	case *glua.LTable:
		req.User = api.Identity{User: str(u, "user", ""), Admin: glua.LVAsBool(u.RawGetString("admin"))}
		if g, ok := u.RawGetString("groups").(*glua.LTable); ok {
			req.User.Groups = lua.Strings(g)
		}
	default:
		return nil, nil, fmt.Errorf("request needs user")
	}
	if o := str(t, "op", ""); o != "" {
		op, err := api.ParseOp(o)
		if err != nil {
			return nil, nil, err
		}
		req.Op = op
	}
	req.Cluster = str(t, "cluster", "")
	req.All = glua.LVAsBool(t.RawGetString("all"))
	req.DryRun = glua.LVAsBool(t.RawGetString("dry_run"))
	req.Force = glua.LVAsBool(t.RawGetString("force"))
	if l, ok := t.RawGetString("lnms").(*glua.LTable); ok {
		req.LNMs = lua.Strings(l)
	}
	if a, ok := t.RawGetString("args").(*glua.LTable); ok {
		req.Args = lua.StringMap(a)
	}
	domain := f.Domain()
	var chosen []struct{ lnm, target string }
	if vt, ok := t.RawGetString("vms").(*glua.LTable); ok {
		for i := 1; i <= vt.Len(); i++ {
			var rv core.ReqVM
			var lnm, target string
			switch e := vt.RawGetInt(i).(type) {
			case glua.LString:
				name := string(e)
				if !strings.Contains(name, ".") {
					name = api.FullName(name, req.User.User, domain)
				}
				rv = core.ReqVM{Name: name}
				if v, ok := f.VM(name); ok {
					rv = core.ReqVM{Name: v.Name, Short: v.Short, Owner: v.Owner, Cluster: v.Cluster, LNM: v.LNM,
						MemMB: v.MemMB, VCPUs: v.VCPUs, State: v.State, Data: v.Data}
				} else {
					rv.Short, rv.Owner, _ = api.ParseFullName(name, domain)
				}
			case *glua.LTable:
				rv = core.ReqVM{Short: str(e, "short", ""), Owner: str(e, "owner", req.User.User), Name: str(e, "name", ""),
					Cluster: str(e, "cluster", req.Cluster), LNM: str(e, "lnm", ""),
					MemMB: int(num(e, "mem_mb", 512)), VCPUs: int(num(e, "vcpus", 1)), State: api.VMState(str(e, "state", ""))}
				target = str(e, "target", "")
				if rv.Name == "" {
					rv.Name = api.FullName(rv.Short, rv.Owner, domain)
				}
				if rv.Cluster == "" {
					rv.Cluster = api.ClusterOf(rv.Short)
				}
				if d, ok := e.RawGetString("data").(*glua.LTable); ok {
					rv.Data = lua.StringMap(d)
				}
			default:
				return nil, nil, fmt.Errorf("vms[%d] must be a name or a table", i)
			}
			lnm = rv.LNM
			req.VMs = append(req.VMs, rv)
			chosen = append(chosen, struct{ lnm, target string }{lnm, target})
		}
	}
	d := core.NewDecision(req)
	for i, c := range chosen {
		d.VMs[i].LNM, d.VMs[i].Target = c.lnm, c.target
	}
	return req, d, nil
}
