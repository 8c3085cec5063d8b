package lua

import (
	"reflect"
	"strings"
	"testing"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

func fuzzState(t testing.TB) *lstate {
	h, err := New(Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	v := &version{h: h, name: "fuzz", file: "fuzz.lua", ctx: h.ctx, cancel: func() {}}
	ls := &lstate{v: v, memLimit: 64 << 20}
	ls.L = newSandbox(ls, quietLogger(), "fuzz.lua")
	ls.installAPI()
	return ls
}

// FuzzRequestConversion: handing a request to Lua and reading it back
// without changes leaves the decision as NewDecision made it and reports
// no change; setting a field in Lua shows up in the decision; the request
// itself never changes.
func FuzzRequestConversion(f *testing.F) {
	f.Add("c1", "alice", "n1", "ip", "10.0.0.1", "n2", "k", "v", 512, 2, true)
	f.Add("", "", "", "", "", "", "", "", 0, 0, false)
	f.Add("x\x00y", "ü", "n\"1", "a.b", "\xff", "", "=", "", -1, 1<<30, true)
	f.Fuzz(func(t *testing.T, short, owner, lnm, dk, dv, sugg, ak, av string, mem, vcpus int, all bool) {
		ls := fuzzState(t)
		defer ls.L.Close()
		mk := func() *core.Request {
			r := &core.Request{ID: "id", Kind: core.KindStart, User: api.Identity{User: owner, Groups: []string{owner}},
				Cluster: "c", All: all}
			r.VMs = []core.ReqVM{
				{Name: short + ".1", Short: short, Owner: owner, LNM: lnm, MemMB: mem, VCPUs: vcpus},
				{Name: short + ".2", Short: short, Owner: owner, Data: map[string]string{dk: dv}},
			}
			if sugg != "" {
				r.LNMs = []string{sugg}
			}
			if ak != "" {
				r.Args = map[string]string{ak: av}
			}
			return r
		}
		req, want := mk(), mk()
		d := core.NewDecision(req)
		tbl := ls.reqValue(req, d, api.EvStartRequest)
		changed, err := ls.applyReq(tbl, req, d, "fuzz.lua:h")
		if mem > 1<<31-1 || mem < -(1<<31) {
			return
		}
		if err != nil || changed {
			t.Fatalf("round trip: changed=%v err=%v", changed, err)
		}
		if !reflect.DeepEqual(req, want) {
			t.Fatalf("round trip changed request:\n%+v\n%+v", req, want)
		}
		if wd := core.NewDecision(want); !reflect.DeepEqual(d, wd) {
			t.Fatalf("round trip changed decision:\n%+v\n%+v", d, wd)
		}
		// modify through Lua
		ls.L.SetGlobal("req", tbl)
		ls.L.SetGlobal("v", glua.LString(dv))
		if err := ls.L.DoString(`req.vms[1].lnm = "placed"; req.vms[2].data.extra = v; req:drop(req.vms[1].name, "r")`); err != nil {
			t.Fatal(err)
		}
		changed, err = ls.applyReq(tbl, req, d, "fuzz.lua:h")
		if err != nil || !changed {
			t.Fatalf("modify: changed=%v err=%v", changed, err)
		}
		if d.Kept() != 1 || !d.VMs[0].Dropped || d.VMs[0].LNM != "placed" || d.VMs[1].Data["extra"] != dv ||
			len(d.Dropped) != 1 || d.Dropped[0].VM != short+".1" || d.Dropped[0].By != "fuzz.lua:h" {
			t.Fatalf("after modify: %+v dropped %+v", d.VMs, d.Dropped)
		}
		if !reflect.DeepEqual(req, want) {
			t.Fatalf("the request was changed:\n%+v\n%+v", req, want)
		}
	})
}

func TestAddingVMsIsAnError(t *testing.T) {
	ls := fuzzState(t)
	defer ls.L.Close()
	req := startReq("c1")
	d := core.NewDecision(req)
	tbl := ls.reqValue(req, d, api.EvStartRequest)
	ls.L.SetGlobal("req", tbl)
	if err := ls.L.DoString(`req.vms[2] = {name = "evil.mallory.usher.test"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.applyReq(tbl, req, d, "x"); err == nil || !strings.Contains(err.Error(), "may not add VMs") {
		t.Fatalf("err %v", err)
	}
	if d.Kept() != 1 || len(d.Dropped) != 0 {
		t.Fatalf("decision after the refused addition: %+v", d)
	}
}
