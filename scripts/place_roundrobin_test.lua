-- Fixture tests for place_roundrobin.lua.
local t = usher_test
t.fixture{lnms = {{name = "n1"}, {name = "n2"}, {name = "n3", state = "disconnected"},
                  {name = "n4", free_mem_mb = 100}}}

t.case("rotates over connected nodes that fit", function()
  local r = t.request("start_request", {user = "alice", cluster = "c",
    vms = {{short = "c1"}, {short = "c2"}, {short = "c3"}, {short = "c4"}}})
  t.eq({r.vms[1].lnm, r.vms[2].lnm, r.vms[3].lnm, r.vms[4].lnm}, {"n1", "n2", "n1", "n2"})
  -- the position persists across requests
  r = t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "c5"}}})
  t.eq(r.vms[1].lnm, "n1")
end)

t.case("honours connected suggestions", function()
  local r = t.request("start_request", {user = "alice", cluster = "c", lnms = {"n2", "n3"},
    vms = {{short = "c1"}, {short = "c2"}}})
  t.eq({r.vms[1].lnm, r.vms[2].lnm}, {"n2", "n2"})
end)

t.case("no capacity drops the VM", function()
  local r = t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "big", mem_mb = 100000}}})
  t.eq(#r.vms, 0)
  t.eq(r.dropped[1].reason, "no capacity")
end)

t.case("migrate picks a target other than the current node", function()
  t.fixture{lnms = {{name = "n1", cpu = 3}, {name = "n2", cpu = 1}, {name = "n3", cpu = 0.5}},
            vms = {{short = "m1", owner = "alice", lnm = "n3"}}}
  local r = t.request("migrate_request", {user = "alice", vms = {"m1"}})
  t.eq(r.vms[1].target, "n2")
end)
