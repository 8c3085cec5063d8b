-- Fixture tests for qos.lua, with the least-loaded placement after it.
local t = usher_test
t.load{"qos", "place_leastloaded"}
t.config{qos = {guaranteed = {users = {"alice"}, groups = {"hpc"}}}}
t.fixture{lnms = {
  -- "over" offers 16 vCPUs on 4 host CPUs, 3 of them guaranteed already
  {name = "over", cpus = 16, cpu_m1 = 0.1, free_vcpus = 12, free_guaranteed_vcpus = 1},
  {name = "plain", cpus = 4, cpu_m1 = 2.0},
}}

t.case("best-effort by default, on the least loaded node", function()
  local r = t.request("start_request", {user = "bob", cluster = "c", vms = {{short = "c1", vcpus = 2}}})
  t.eq(r.vms[1].data.qos, "best-effort")
  t.eq(r.vms[1].lnm, "over")
end)

t.case("a guaranteed VM goes where its vCPUs can be guaranteed", function()
  local r = t.request("start_request", {user = "alice", cluster = "c", args = {qos = "guaranteed"},
    vms = {{short = "c1", vcpus = 2}}})
  t.eq(r.vms[1].data.qos, "guaranteed")
  t.eq(r.vms[1].lnm, "plain")
end)

t.case("several guaranteed VMs share out what can be guaranteed", function()
  local r = t.request("start_request", {user = {user = "carol", groups = {"hpc"}}, cluster = "c", args = {qos = "guaranteed"},
    vms = {{short = "c1", vcpus = 1}, {short = "c2", vcpus = 4}, {short = "c3", vcpus = 1}}})
  local on = {}
  for _, vm in ipairs(r.vms) do on[vm.name] = vm.lnm end
  t.eq(#r.dropped, 1, "4 + 1 + 1 vCPUs on 1 + 4 guaranteeable")
end)

t.case("guaranteed VMs only for whom config allows", function()
  local r = t.request("start_request", {user = "bob", cluster = "c", args = {qos = "guaranteed"}, vms = {{short = "c1"}}})
  t.ok(r.rejected and r.rejected:find("reserved", 1, true), r.rejected)
  r = t.request("start_request", {user = "bob", cluster = "c", args = {qos = "gold"}, vms = {{short = "c1"}}})
  t.ok(r.rejected and r.rejected:find("gold", 1, true), r.rejected)
end)
