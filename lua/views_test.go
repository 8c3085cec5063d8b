package lua

import (
	"context"
	"strings"
	"testing"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
)

// TestOneViewPerVM: register_vm's vm argument and req.vms[1] are the same
// VM: data written through either is seen through the other and none is
// lost.
func TestOneViewPerVM(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "reg.lua", `usher.on("register_vm", function(req, vm)
  vm.data.a = "1"
  req.vms[1].data.b = "2"
  vm.data.seen_a = req.vms[1].data.a
end)`)
	h := newHost(t, Options{Dirs: []string{dir}})
	req := startReq("c1")
	req.VMs[0].Data = api.StringMap{"orig": "o"}
	d := core.NewDecision(req)
	if err := h.RegisterVM(context.Background(), req, d, 0); err != nil {
		t.Fatal(err)
	}
	got := d.VMs[0].Data
	if got["orig"] != "o" || got["a"] != "1" || got["b"] != "2" || got["seen_a"] != "1" {
		t.Fatalf("data after register_vm: %v", got)
	}
}

// TestReadOnlyTablesHold: where a table cannot change, the raw functions
// see what it stands for and refuse to write to it at the script's line.
func TestReadOnlyTablesHold(t *testing.T) {
	cases := []struct {
		event, body, want string
	}{
		{"authorize", `if next(req.args) ~= "k" then error("next saw nothing") end`, ""},
		{"authorize", `if table.concat(req.lnms, ",") ~= "n1,n2" then error("concat saw " .. table.concat(req.lnms, ",")) end`, ""},
		{"authorize", `local a, b = unpack(req.lnms) if b ~= "n2" then error("unpack") end`, ""},
		{"authorize", `if rawget(req.args, "k") ~= "v" then error("rawget") end`, ""},
		{"authorize", `table.insert(req.lnms, "n3")`, "t.lua:2: req.lnms cannot change in authorize"},
		{"authorize", `table.remove(req.lnms)`, "t.lua:2: req.lnms cannot change in authorize"},
		{"authorize", `table.sort(req.lnms)`, "t.lua:2: req.lnms cannot change in authorize"},
		{"op_request", `rawset(req.vms[1].data, "k", "v")`, "t.lua:2: vm.data cannot change in op_request"},
		{"register_vm", `req:drop(req.vms[1].name, "no")`, "t.lua:2: req.vms cannot change in register_vm"},
		{"op_request", `if req.force ~= true then error("req.force is " .. tostring(req.force)) end`, ""},
		{"op_request", `req.force = false`, "t.lua:2: req.force is read-only"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		writeScript(t, dir, "t.lua", `usher.on("`+c.event+`", function(req)`+"\n"+c.body+"\nend)")
		h := newHost(t, Options{Dirs: []string{dir}})
		req := startReq("c1")
		req.Args = api.StringMap{"k": "v"}
		req.LNMs = []string{"n1", "n2"}
		d := core.NewDecision(req)
		var err error
		switch c.event {
		case api.EvRegisterVM:
			err = h.RegisterVM(context.Background(), req, d, 0)
		case api.EvAuthorize:
			err = h.Authorize(context.Background(), req, d)
		default:
			req.Kind, req.Op, d.Op, req.Force = core.KindOp, api.OpPause, api.OpPause, true
			err = h.Request(context.Background(), c.event, req, d)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %q: %v", c.event, c.body, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %q: %v, want an error containing %q", c.event, c.body, err, c.want)
		}
		if len(d.LNMs) != 2 || d.Args["k"] != "v" || len(d.Args) != 1 || d.VMs[0].Dropped || len(d.VMs[0].Data) != 0 {
			t.Errorf("%s: %q changed the decision: %+v", c.event, c.body, d)
		}
	}
}
