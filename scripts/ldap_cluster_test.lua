-- Fixture tests for ldap_cluster.lua (in-memory LDAP stand-in); the
-- removal on destroy (a notification, which usher_test cannot send) is
-- covered against slapd by lua/modules/sitetest (build tag site).
local t = usher_test
local people = {
  {dn = "uid=alice,ou=people,dc=usher,dc=test", uid = "alice", objectClass = {"posixAccount"}, userPassword = "pw"},
}
t.config{ldap_cluster = {fake_ldap = people, url = "ldap://fake", bind = "admin",
  base = "dc=usher,dc=test"}}

t.case("first VM of a cluster creates its branch", function()
  t.fixture{}
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web"}}}
  t.ok(vm, err)
  t.eq(vm.data.ldap_branch, "ou=web-alice,ou=clusters,dc=usher,dc=test")
end)

t.case("later VMs of the cluster leave it alone", function()
  t.fixture{lnms = {{name = "n1"}}, vms = {{short = "web1", owner = "alice", cluster = "web", lnm = "n1"}}}
  local vm = t.register_vm{user = "alice", vms = {{short = "web2", cluster = "web"}}}
  t.eq(vm.data.ldap_branch, nil)
end)

t.case("a user without an LDAP entry: logged, VM still starts unless required", function()
  t.fixture{}
  local vm = t.register_vm{user = "mallory", vms = {{short = "x1", cluster = "x"}}}
  t.ok(vm)
  t.eq(vm.data.ldap_branch, nil)
  t.config{ldap_cluster = {fake_ldap = people, url = "ldap://fake", base = "dc=usher,dc=test", required = true}}
  local none, err = t.register_vm{user = "mallory", vms = {{short = "x1", cluster = "x"}}}
  t.eq(none, nil)
  t.ok(err:find("no unique LDAP entry"), err)
end)
