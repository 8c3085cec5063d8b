-- Fixture tests for place_leastloaded.lua.
local t = usher_test
t.fixture{lnms = {
  {name = "busy", cpus = 4, cpu_m1 = 3.5},
  {name = "idle", cpus = 4, cpu_m1 = 0.2, free_mem_mb = 2048},
  {name = "mid",  cpus = 8, cpu_m1 = 2.0},
}}

t.case("least 1-minute CPU per core first, then free memory", function()
  local r = t.request("start_request", {user = "alice", cluster = "c",
    vms = {{short = "c1", vcpus = 1}, {short = "c2", vcpus = 1, mem_mb = 4096}}})
  t.eq(r.vms[1].lnm, "idle")
  -- c2 needs 4 GB: idle has only 2 GB left, so the next least loaded
  t.eq(r.vms[2].lnm, "mid")
end)

t.case("no node fits: no capacity", function()
  local r = t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "c1", vcpus = 64}}})
  t.eq(r.dropped[1].reason, "no capacity")
end)

t.case("a single VM: the least loaded node that fits it", function()
  t.eq(t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "c1", vcpus = 1}}}).vms[1].lnm, "idle")
  local r = t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "c1", vcpus = 1, mem_mb = 4096}}})
  t.eq(r.vms[1].lnm, "mid")
end)

t.case("a single VM: suggested nodes first, all nodes when none of them fits", function()
  local r = t.request("start_request", {user = "alice", cluster = "c", lnms = {"busy"}, vms = {{short = "c1", vcpus = 1}}})
  t.eq(r.vms[1].lnm, "busy")
  r = t.request("start_request", {user = "alice", cluster = "c", lnms = {"idle"}, vms = {{short = "c1", vcpus = 1, mem_mb = 4096}}})
  t.eq(r.vms[1].lnm, "mid")
end)
