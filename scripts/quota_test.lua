-- Fixture tests for quota.lua.
local t = usher_test
t.config{quota = {max_vms = 3}}
t.fixture{vms = {{short = "old1", owner = "alice", lnm = "n1"}}, lnms = {{name = "n1"}}}

t.case("under quota passes untouched", function()
  local r, err = t.request("start_request", {user = "alice", cluster = "c", vms = {{short = "c1"}, {short = "c2"}}})
  t.eq(err, nil)
  t.eq(#r.vms, 2)
  t.eq(r.trace[1].action, "approved")
end)

t.case("over quota is trimmed, not rejected", function()
  local r, err = t.request("start_request", {user = "alice", cluster = "c",
    vms = {{short = "c1"}, {short = "c2"}, {short = "c3"}, {short = "c4"}}})
  t.eq(err, nil)
  t.eq(#r.vms, 2)
  t.eq(r.vms[2].short, "c2")
  t.eq(#r.dropped, 2)
  t.eq(r.dropped[1].reason, "quota: 2 of 4 allowed")
  t.eq(r.dropped[2].vm, "c4.alice.usher.test")
end)

t.case("other users have their own quota", function()
  local r = t.request("start_request", {user = "bob", cluster = "c", vms = {{short = "c1"}, {short = "c2"}, {short = "c3"}}})
  t.eq(#r.vms, 3)
end)
