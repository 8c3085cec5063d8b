-- Fixture tests for place_pack.lua.
local t = usher_test
t.fixture{lnms = {
  {name = "empty1"},
  {name = "active", vms = 3, free_mem_mb = 3000},
  {name = "empty2"},
}}

t.case("fills active nodes before waking idle ones", function()
  local r = t.request("start_request", {user = "alice", cluster = "c",
    vms = {{short = "c1", mem_mb = 1024}, {short = "c2", mem_mb = 1024}, {short = "c3", mem_mb = 1024}}})
  t.eq({r.vms[1].lnm, r.vms[2].lnm}, {"active", "active"})
  -- active has 952 MB left: c3 opens one idle node
  t.ok(r.vms[3].lnm == "empty1" or r.vms[3].lnm == "empty2", r.vms[3].lnm)
end)

t.case("then keeps filling the node it opened", function()
  local r = t.request("start_request", {user = "alice", cluster = "c",
    vms = {{short = "c1", mem_mb = 4000}, {short = "c2", mem_mb = 4000}}})
  t.eq(r.vms[1].lnm, r.vms[2].lnm)
end)
