-- Fixture tests for auth_htpasswd.lua (run with `usher policy test scripts`).
local t = usher_test
t.config{auth_htpasswd = {file = "testdata/htpasswd", admins = {"carol"}}}

t.case("accepts a correct password", function()
  local id, err = t.authenticate("alice", "alicepw")
  t.ok(id, err)
  t.eq(id.user, "alice")
  t.eq(id.admin, false)
end)

t.case("groups from the file; admin group makes an admin", function()
  local id = t.authenticate("root", "rootpw")
  t.eq(id.groups, {"admin", "staff"})
  t.eq(id.admin, true)
end)

t.case("refuses a wrong password, an unknown user and empty passwords", function()
  t.eq(t.authenticate("alice", "nope"), nil)
  t.eq(t.authenticate("mallory", "alicepw"), nil)
  t.eq(t.authenticate("alice", ""), nil)
  t.eq(t.authenticate("nopass", ""), nil)
  local _, err = t.authenticate("alice", "x")
  t.eq(err, "authentication failed")
end)
