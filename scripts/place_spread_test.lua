-- Fixture tests for place_spread.lua.
local t = usher_test
t.fixture{
  lnms = {{name = "n1"}, {name = "n2"}, {name = "n3"}},
  vms = {{short = "web1", owner = "alice", cluster = "web", lnm = "n1"}},
}

t.case("VMs of one cluster land on distinct nodes", function()
  local r = t.request("start_request", {user = "alice", cluster = "web",
    vms = {{short = "web2"}, {short = "web3"}}})
  local a, b = r.vms[1].lnm, r.vms[2].lnm
  t.ok(a ~= "n1" and b ~= "n1" and a ~= b, "spread over n2, n3: got " .. a .. ", " .. b)
end)

t.case("more VMs than nodes share evenly", function()
  local r = t.request("start_request", {user = "alice", cluster = "db",
    vms = {{short = "db1"}, {short = "db2"}, {short = "db3"}, {short = "db4"}, {short = "db5"}, {short = "db6"}}})
  local per = {}
  for _, vm in ipairs(r.vms) do per[vm.lnm] = (per[vm.lnm] or 0) + 1 end
  t.eq(per, {n1 = 2, n2 = 2, n3 = 2})
end)
