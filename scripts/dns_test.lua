-- Fixture tests for dns.lua (in-memory DNS stand-in); lua/modules/sitetest
-- checks the same updates against BIND with dig.
local t = usher_test
local function cfg(extra)
  local c = {fake_dns_keys = {"usher-key."}, server = "127.0.0.1:53", key = "usher-key.",
             zone = "usher.test", reverse_zone = "10.in-addr.arpa"}
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end
t.config{dns = cfg()}

t.case("register_vm adds the VM's name", function()
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web", data = {ip = "10.1.0.7"}}}}
  t.ok(vm, err)
  t.eq(vm.data.dns, "web1.alice.usher.test")
  t.eq(vm.data.dns_alias, nil)
end)

t.case("dns_alias=yes adds the cluster alias", function()
  local vm = t.register_vm{user = "alice", args = {dns_alias = "yes"}, vms = {{short = "web2", cluster = "web", data = {ip = "10.1.0.8"}}}}
  t.eq(vm.data.dns_alias, "web.alice.usher.test")
end)

t.case("no address: nothing to do", function()
  local vm = t.register_vm{user = "alice", vms = {{short = "web3", cluster = "web"}}}
  t.eq(vm.data.dns, nil)
end)

t.case("a refused update (wrong TSIG key) keeps the VM from starting and says why", function()
  t.config{dns = cfg{key = "wrong-key."}}
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web4", cluster = "web", data = {ip = "10.1.0.9"}}}}
  t.eq(vm, nil)
  t.ok(err:find("NOTAUTH"), err)
end)

t.case("required = false: logged only", function()
  t.config{dns = cfg{key = "wrong-key.", required = false}}
  local vm = t.register_vm{user = "alice", vms = {{short = "web5", cluster = "web", data = {ip = "10.1.0.10"}}}}
  t.ok(vm)
  t.eq(vm.data.dns, nil)
end)
