-- Fixture tests for auth_ldap.lua against the in-memory LDAP stand-in
-- (every policy test run has one); lua/modules/sitetest runs the same
-- policy against slapd.
local t = usher_test
local people = {
  {dn = "uid=alice,ou=people,dc=usher,dc=test", uid = "alice", objectClass = {"posixAccount"}, userPassword = "alicepw"},
  {dn = "uid=bob,ou=people,dc=usher,dc=test", uid = "bob", objectClass = {"posixAccount"}, userPassword = "bobpw"},
  {dn = "cn=usher-admins,ou=groups,dc=usher,dc=test", cn = "usher-admins", objectClass = {"posixGroup"}, memberUid = {"bob"}},
}
local function cfg(extra)
  local c = {fake_ldap = people, url = "ldap://fake", base = "ou=people,dc=usher,dc=test",
             group_base = "ou=groups,dc=usher,dc=test"}
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end
t.config{auth_ldap = cfg()}

t.case("binds as the user", function()
  local id, err = t.authenticate("alice", "alicepw")
  t.ok(id, err)
  t.eq(id.user, "alice")
  t.eq(id.admin, false)
end)

t.case("groups from LDAP; the admin group makes an admin", function()
  local id = t.authenticate("bob", "bobpw")
  t.eq(id.groups, {"usher-admins"})
  t.eq(id.admin, true)
end)

t.case("wrong or empty password, unknown user: refused", function()
  t.eq(t.authenticate("alice", "bobpw"), nil)
  t.eq(t.authenticate("alice", ""), nil)
  t.eq(t.authenticate("carol", "x"), nil)
end)

t.case("filter injection in the user name fails safely", function()
  t.eq(t.authenticate("alice)(uid=*", "alicepw"), nil)
  t.eq(t.authenticate("*)(uid=*", "alicepw"), nil)
  t.eq(t.authenticate("al*", "alicepw"), nil)
  t.eq(t.authenticate("*", "bobpw"), nil)
end)

t.case("LDAP unreachable: login fails closed", function()
  t.config{auth_ldap = cfg{fake_down = {"ldap"}}}
  local id, err = t.authenticate("alice", "alicepw")
  t.eq(id, nil)
  t.eq(err, "authentication failed")
end)

t.case("chained with auth_htpasswd, LDAP first", function()
  t.load{"auth_ldap", "auth_htpasswd"}
  t.config{auth_ldap = cfg{order = 5}, auth_htpasswd = {file = "testdata/htpasswd"}}
  t.eq(t.authenticate("alice", "alicepw").user, "alice")    -- LDAP password
  t.ok(t.authenticate("root", "rootpw"), "htpasswd user")    -- only in htpasswd
  t.eq(t.authenticate("bob", "nope"), nil)
end)

t.case("chained with auth_htpasswd, htpasswd first; LDAP down still lets htpasswd users in", function()
  t.load{"auth_ldap", "auth_htpasswd"}
  t.config{auth_ldap = cfg{order = 15, fake_down = {"ldap"}}, auth_htpasswd = {file = "testdata/htpasswd"}}
  t.ok(t.authenticate("alice", "alicepw"), "alice is in htpasswd too")
  t.eq(t.authenticate("bob", "bobpw"), nil)   -- only in LDAP, which is down
end)
