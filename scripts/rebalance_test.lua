-- Fixture tests for rebalance.lua.
local t = usher_test
t.config{rebalance = {interval = "1m", threshold = 0.75}}

t.case("moves one VM from a hot node to the coolest", function()
  t.fixture{
    lnms = {{name = "hot", cpus = 4, cpu_m5 = 3.8}, {name = "cool", cpus = 4, cpu_m5 = 0.4}, {name = "warm", cpus = 4, cpu_m5 = 2}},
    vms = {{short = "v1", owner = "alice", lnm = "hot"}, {short = "v2", owner = "bob", lnm = "hot"}},
  }
  t.eq(t.tick("rebalance"), nil)
  local acts = t.actions()
  t.eq(#acts, 1)
  t.eq(acts[1].kind, "migrate")
  t.eq(acts[1].lnms, {"cool"})
  t.eq(#acts[1].vms, 1)
end)

t.case("does nothing below the threshold", function()
  t.fixture{
    lnms = {{name = "a", cpus = 4, cpu_m5 = 2.9}, {name = "b", cpus = 4, cpu_m5 = 0.1}},
    vms = {{short = "v1", owner = "alice", lnm = "a"}},
  }
  t.tick("rebalance")
  t.eq(#t.actions(), 0)
end)
