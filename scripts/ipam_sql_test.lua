-- Fixture tests for ipam_sql.lua (in-memory SQLite); the crash test in
-- lua/modules/sitetest kills a controller between reserve and start_complete.
local t = usher_test
local ranges = {
  {name = "lab", subnet = "10.10.0.0/24", vlan = 10, first = "10.10.0.10", last = "10.10.0.12", users = {"alice"},
   gateway = "10.10.0.1", dns = {"10.10.0.2", "10.10.0.3"}, search = {"lab.example.org"}},
  {name = "pool", subnet = "10.20.0.0/24", vlan = 20, first = "10.20.0.10", last = "10.20.0.11"},
}
t.config{ipam_sql = {ranges = ranges}}

local function ips(res)
  local out = {}
  for _, vm in ipairs(res.vms) do out[#out + 1] = vm.data.ip end
  return out
end

t.case("reserves distinct addresses from the user's range, then the shared one", function()
  local res, err = t.request("start_request", {id = "r1", user = "alice", cluster = "web",
    vms = {{short = "web1"}, {short = "web2"}}})
  t.ok(res, err)
  t.eq(ips(res), {"10.10.0.10", "10.10.0.11"})
  t.eq(res.vms[1].data.vlan, "10")
  t.eq(res.vms[1].data.subnet, "10.10.0.0/24")
  -- the guest configuration the node applies
  t.eq(res.vms[1].data.mac, "52:54:0a:0a:00:0a")
  t.eq(res.vms[2].data.mac, "52:54:0a:0a:00:0b")
  t.eq(res.vms[1].data.gateway, "10.10.0.1")
  t.eq(res.vms[1].data.nameservers, "10.10.0.2,10.10.0.3")
  t.eq(res.vms[1].data.search, "lab.example.org")
  res = t.request("start_request", {id = "r2", user = "alice", cluster = "web", vms = {{short = "web3"}, {short = "web4"}}})
  t.eq(ips(res), {"10.10.0.12", "10.20.0.10"})
  -- a range without gateway or dns sets none; the search domain defaults to the owner's
  t.eq(res.vms[2].data.gateway, nil)
  t.eq(res.vms[2].data.search, "alice.usher.test")
end)

t.case("a retried VM keeps its address", function()
  local res = t.request("start_request", {id = "r2", user = "alice", cluster = "web", vms = {{short = "web4"}}})
  t.eq(ips(res), {"10.20.0.10"})
end)

t.case("other users only get the shared range; when it is exhausted VMs are dropped", function()
  local res = t.request("start_request", {id = "r3", user = "bob", cluster = "b", vms = {{short = "b1"}, {short = "b2"}}})
  t.eq(ips(res), {"10.20.0.11"})
  t.eq(#res.dropped, 1)
  t.ok(res.dropped[1].reason:find("ipam: no free address"), res.dropped[1].reason)
end)

t.case("plan (dry run) reserves nothing", function()
  local res = t.request("start_request", {id = "r4", user = "carol", cluster = "c", dry_run = true, vms = {{short = "c1"}}})
  t.eq(ips(res), {})
  t.eq(#res.dropped, 0)
end)
