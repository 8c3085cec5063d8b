-- Fixture tests for rebalance.lua. The store lives as long as the file's
-- run: each case uses node and VM names of its own.
local t = usher_test
t.config{rebalance = {interval = "1m", high = 0.75, low = 0.6, settle = "10m", cooldown = "30m"}}

local function migrations()
  local out = {}
  for _, a in ipairs(t.actions()) do if a.kind == "migrate" then out[#out + 1] = a end end
  return out
end

t.case("moves one VM from a hot node to the coolest", function()
  t.fixture{
    lnms = {{name = "hot", cpus = 4, cpu_m5 = 3.8}, {name = "cool", cpus = 4, cpu_m5 = 0.4}, {name = "warm", cpus = 4, cpu_m5 = 2}},
    vms = {{short = "v1", owner = "alice", lnm = "hot", cpu = 1}, {short = "v2", owner = "bob", lnm = "hot", cpu = 0.5}},
  }
  t.eq(t.tick("rebalance"), nil)
  local m = migrations()
  t.eq(#m, 1)
  t.eq(m[1].lnms, {"cool"})
  t.eq(m[1].vms, {"v1.alice.usher.test"})
end)

t.case("does nothing below the high mark", function()
  t.fixture{
    lnms = {{name = "a", cpus = 4, cpu_m5 = 2.9}, {name = "b", cpus = 4, cpu_m5 = 0.1}},
    vms = {{short = "v1", owner = "alice", lnm = "a", cpu = 1}},
  }
  t.tick("rebalance")
  t.eq(#migrations(), 0)
end)

t.case("settles: the lagging average does not move the next VM", function()
  -- Still 3.4 of 4 on the 5-minute average, but 1.0 of it has left.
  t.fixture{
    lnms = {{name = "hot", cpus = 4, cpu_m5 = 3.4}, {name = "cool", cpus = 4, cpu_m5 = 0.2}},
    vms = {{short = "v1", owner = "alice", lnm = "hot", cpu = 1.0}, {short = "v2", owner = "alice", lnm = "hot", cpu = 0.9}},
  }
  t.tick("rebalance")
  t.eq(#migrations(), 1)
  t.tick("rebalance") -- the fixture's averages have not moved
  t.eq(#migrations(), 1, "a second move while the first settles")
end)

t.case("a VM moved is not moved again within the cooldown", function()
  t.fixture{
    lnms = {{name = "hot2", cpus = 2, cpu_m5 = 1.9}, {name = "cool2", cpus = 4, cpu_m5 = 0}},
    vms = {{short = "c1", owner = "carol", lnm = "hot2", cpu = 0.6}},
  }
  t.tick("rebalance")
  t.eq(#migrations(), 1)
  -- It is back on a hot node (the fixture did not move it): still cooling.
  t.tick("rebalance")
  t.eq(#migrations(), 1)
end)

t.case("hysteresis: no move that would push the target past low", function()
  t.fixture{
    lnms = {{name = "hot", cpus = 4, cpu_m5 = 3.2}, {name = "mid", cpus = 4, cpu_m5 = 2.0}},
    vms = {{short = "v1", owner = "alice", lnm = "hot", cpu = 0.8}},
  }
  t.tick("rebalance")
  t.eq(#migrations(), 0)
end)

t.case("isolated and draining nodes are neither sources nor targets", function()
  t.fixture{
    lnms = {{name = "hot", cpus = 4, cpu_m5 = 3.9, mode = "isolated"}, {name = "cool", cpus = 4, cpu_m5 = 0, mode = "draining"},
            {name = "ok", cpus = 4, cpu_m5 = 1}},
    vms = {{short = "v1", owner = "alice", lnm = "hot", cpu = 1}},
  }
  t.tick("rebalance")
  t.eq(#migrations(), 0)
end)

t.case("a node joining or restored takes load at once", function()
  t.fixture{
    lnms = {{name = "hot3", cpus = 4, cpu_m5 = 3.8}, {name = "new", cpus = 4, cpu_m5 = 0}},
    vms = {{short = "j1", owner = "dave", lnm = "hot3", cpu = 1}, {short = "j2", owner = "dave", lnm = "hot3", cpu = 1}},
  }
  t.eq(t.notify{type = "lnm_connected", lnm = "new"}, nil)
  t.eq(#migrations(), 1)
  t.eq(migrations()[1].lnms, {"new"})
  t.eq(t.notify{type = "lnm_mode", lnm = "new", detail = {mode = "isolated", previous = "active"}}, nil)
  t.eq(#migrations(), 1, "isolating is not restoring")
end)
