package lua

import (
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core/coretest"
)

// TestLNMViews: usher.lnm and usher.lnms hand scripts read-only views of
// node records: every documented field reads as it did from the tables they
// replaced (absent text fields are nil), the info, status and usage parts
// are the same objects on every access, and a write raises an error naming
// the script and line.
func TestLNMViews(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "n.lua", `
usher.on("start_request", function(req)
  local n = usher.lnm("n2")
  local all = usher.lnms()
  local q = usher.lnms{connected = true, order_by = "free_mem", limit = 1}
  local ok, err = pcall(function() n.status.free_mem_mb = 1 end)
  local ok2, err2 = pcall(function() n.extra = 1 end)
  for _, vm in ipairs(req.vms) do
    vm.data.top = table.concat({n.name, tostring(n.connected), n.state, tostring(n.since > 0)}, ",")
    vm.data.info = table.concat({n.info.name, tostring(n.info.address), n.info.driver, n.info.cpus,
                                 n.info.mem_mb, n.info.hostname, tostring(n.info.model)}, ",")
    vm.data.status = table.concat({n.status.vms, n.status.free_mem_mb, n.status.free_vcpus,
                                   n.status.usage.cpu.m1, n.status.reported_at}, ",")
    vm.data.same = tostring(n.info == n.info and n.status == n.status and n.status.usage == n.status.usage)
    vm.data.count = #all .. ":" .. q[1].name
    vm.data.none = tostring(n.nosuch) .. tostring(n.info.nosuch) .. tostring(n.status.nosuch)
    vm.data.ro = tostring(ok) .. ":" .. tostring(err)
    vm.data.ro2 = tostring(ok2) .. ":" .. tostring(err2)
    vm.data.str = tostring(n) .. "|" .. tostring(n.info) .. "|" .. tostring(n.status)
  end
end, {order = 10, name = "use"})`)
	h := newHost(t, Options{Dirs: []string{dir}})
	v := coretest.NewView("usher.test")
	v.AddLNM(&api.LNM{Info: api.NodeInfo{Name: "n2", CPUs: 8, MemMB: 16384, Driver: "sim", Hostname: "h2"},
		State: api.LNMConnected, Since: time.Now(),
		Status: api.NodeStatus{VMs: 3, FreeMemMB: 9000, FreeVCPUs: 5, ReportedAt: 1700000000,
			Usage: api.Usage{CPU: api.Avg{M1: 1.5}}}})
	v.AddLNM(&api.LNM{Info: api.NodeInfo{Name: "n3", CPUs: 4, MemMB: 4096, Driver: "sim"}, State: api.LNMConnected,
		Status: api.NodeStatus{FreeMemMB: 100}})
	h.Bind(v, nil)
	d := mustRun(t, h, api.EvStartRequest, startReq("c1")).VMs[0].Data
	want := map[string]string{
		"top":    "n2,true,connected,true",
		"info":   "n2,nil,sim,8,16384,h2,nil",
		"status": "3,9000,5,1.5,1700000000",
		"same":   "true",
		"count":  "2:n2",
		"none":   "nilnilnil",
		"ro":     "false:n.lua:6: lnm n2 status is read-only (copy the fields you need into a table of your own)",
		"ro2":    "false:n.lua:7: lnm n2 is read-only (copy the fields you need into a table of your own)",
		"str":    "lnm n2|lnm n2 info|lnm n2 status",
	}
	for k, w := range want {
		if d[k] != w {
			t.Errorf("%s: got %q, want %q", k, d[k], w)
		}
	}
}
