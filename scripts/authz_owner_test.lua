-- Fixture tests for authz_owner.lua.
local t = usher_test
t.fixture{
  vms = {
    {short = "a1", owner = "alice", lnm = "n1"},
    {short = "b1", owner = "bob", lnm = "n1"},
  },
  lnms = {{name = "n1"}},
}

t.case("users keep only their own VMs", function()
  local r, err = t.request("authorize", {kind = "op", op = "pause", user = "alice",
    vms = {"a1.alice.usher.test", "b1.bob.usher.test"}})
  t.eq(err, nil)
  t.eq(#r.vms, 1)
  t.eq(r.vms[1].name, "a1.alice.usher.test")
  t.eq(r.dropped[1].vm, "b1.bob.usher.test")
  t.eq(r.dropped[1].reason, "not yours")
  t.eq(r.dropped[1].by, "authz_owner.lua:owner")
end)

t.case("admins act on everything", function()
  local r = t.request("authorize", {kind = "op", op = "pause", user = {user = "root", admin = true},
    vms = {"a1.alice.usher.test", "b1.bob.usher.test"}})
  t.eq(#r.vms, 2)
  r = t.request("authorize", {kind = "op", op = "pause", user = {user = "eve", groups = {"admin"}},
    vms = {"b1.bob.usher.test"}})
  t.eq(#r.vms, 1)
end)

t.case("list all is for admins only", function()
  local r, err = t.request("authorize", {kind = "list", all = true, user = "alice"})
  t.ok(err and err:find("authz_owner.lua:owner"), "rejected by the handler: " .. tostring(err))
  t.eq(r.trace[1].action, "rejected")
  r, err = t.request("authorize", {kind = "list", all = true, user = {user = "root", admin = true}})
  t.eq(err, nil)
end)
