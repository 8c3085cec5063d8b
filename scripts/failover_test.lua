-- Fixture tests for failover.lua.
local t = usher_test
t.config{failover = {interval = "1s", grace = "30s"}}

local function kinds(acts, kind)
  local out = {}
  for _, a in ipairs(acts) do if a.kind == kind then out[#out + 1] = a end end
  return out
end

t.case("fences a node lost beyond the grace, then restarts its lost VMs", function()
  t.fixture{
    lnms = {{name = "dead", state = "disconnected", since_s = 60}, {name = "ok"}},
    vms = {{short = "a", owner = "alice", lnm = "dead", state = "lost"},
           {short = "b", owner = "alice", lnm = "dead", state = "lost", data = {failover = "none"}},
           {short = "c", owner = "alice", lnm = "ok"}},
  }
  t.eq(t.tick("failover"), nil)
  local acts = t.actions()
  t.eq(#kinds(acts, "fence"), 1)
  t.eq(kinds(acts, "fence")[1].lnm, "dead")
  local f = kinds(acts, "failover")
  t.eq(#f, 1)
  t.eq(f[1].vms, {"a.alice.usher.test"})
end)

t.case("waits out the grace period", function()
  t.fixture{
    lnms = {{name = "dead", state = "disconnected", since_s = 5}, {name = "ok"}},
    vms = {{short = "a", owner = "alice", lnm = "dead", state = "lost"}},
  }
  t.tick("failover")
  t.eq(#t.actions(), 0)
end)

t.case("an already fenced node is not fenced again", function()
  t.fixture{
    lnms = {{name = "dead", state = "disconnected", since_s = 60, fenced = true}, {name = "ok"}},
    vms = {{short = "a", owner = "alice", lnm = "dead", state = "lost"}},
  }
  t.tick("failover")
  local acts = t.actions()
  t.eq(#kinds(acts, "fence"), 0)
  t.eq(#kinds(acts, "failover"), 1)
end)

t.case("a node with nothing lost is left alone", function()
  t.fixture{
    lnms = {{name = "dead", state = "disconnected", since_s = 600}, {name = "ok"}},
    vms = {{short = "a", owner = "alice", lnm = "dead", state = "shutoff"}},
  }
  t.tick("failover")
  t.eq(#t.actions(), 0)
end)
