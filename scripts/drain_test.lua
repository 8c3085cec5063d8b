-- Fixture tests for drain.lua.
local t = usher_test
t.config{drain = {interval = "1s", max_parallel = 3}}

local function kinds(acts, kind)
  local out = {}
  for _, a in ipairs(acts) do if a.kind == kind then out[#out + 1] = a end end
  return out
end

t.case("migrates VMs off a draining node, at most max_parallel per tick", function()
  t.fixture{
    lnms = {{name = "n1", mode = "draining"}, {name = "n2"}},
    vms = {{short = "a1", owner = "alice", lnm = "n1"}, {short = "a2", owner = "alice", lnm = "n1"},
           {short = "a3", owner = "alice", lnm = "n1"}, {short = "a4", owner = "alice", lnm = "n1"},
           {short = "b1", owner = "bob", lnm = "n2"}},
  }
  t.eq(t.tick("drain"), nil)
  local acts = t.actions()
  local mig = kinds(acts, "migrate")
  t.eq(#mig, 1)
  t.eq(#mig[1].vms, 3)
  local notes = kinds(acts, "lnm_notice")
  t.eq(#notes, 1)
  t.eq(notes[1].lnm, "n1")
end)

t.case("follows each VM's strategy", function()
  t.fixture{
    lnms = {{name = "n1", mode = "draining"}, {name = "n2"}},
    vms = {{short = "m", owner = "alice", lnm = "n1"},
           {short = "s", owner = "alice", lnm = "n1", data = {drain = "shutdown"}},
           {short = "f", owner = "alice", lnm = "n1", data = {drain = "stop"}},
           {short = "x", owner = "alice", lnm = "n1", data = {drain = "teleport"}}},
  }
  t.tick("drain")
  local acts = t.actions()
  t.eq(#kinds(acts, "migrate"), 1)
  t.eq(kinds(acts, "migrate")[1].vms, {"m.alice.usher.test"})
  local ops = kinds(acts, "op")
  t.eq(#ops, 2)
  for _, o in ipairs(ops) do t.eq(o.op, "shutdown") end
  local note = kinds(acts, "lnm_notice")[1].notice
  t.ok(note:find("teleport", 1, true), note)
end)

t.case("leaves stopped VMs and other nodes alone", function()
  t.fixture{
    lnms = {{name = "n1", mode = "draining"}, {name = "n2", mode = "isolated"}},
    vms = {{short = "h", owner = "alice", lnm = "n1", state = "hibernated"},
           {short = "o", owner = "alice", lnm = "n2"}},
  }
  t.tick("drain")
  local acts = t.actions()
  t.eq(#kinds(acts, "migrate"), 0)
  t.eq(#kinds(acts, "op"), 0)
end)

t.case("a disconnected draining node waits", function()
  t.fixture{
    lnms = {{name = "n1", mode = "draining", state = "disconnected"}, {name = "n2"}},
    vms = {{short = "a", owner = "alice", lnm = "n1", state = "lost"}},
  }
  t.tick("drain")
  local acts = t.actions()
  t.eq(#kinds(acts, "migrate"), 0)
  t.ok(kinds(acts, "lnm_notice")[1].notice:find("disconnected", 1, true))
end)
