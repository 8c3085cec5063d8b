-- Fixture tests for audit_sql.lua (in-memory SQLite). What lands in the
-- tables is checked in lua/modules/sitetest (build tag site).
local t = usher_test
t.config{audit_sql = {}}

t.case("logs on the way in and out of each request chain without changing the request", function()
  local res, err = t.request("start_request", {user = "alice", cluster = "web", vms = {{short = "web1"}}})
  t.ok(res, err)
  t.eq(#res.trace, 2)
  t.eq(res.trace[1].handler, "audit_sql.lua:start_request_in")
  t.eq(res.trace[2].handler, "audit_sql.lua:start_request_out")
  t.eq(res.trace[2].action, "approved")
end)

t.case("register_vm mirrors the VM", function()
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web", data = {ip = "10.0.0.1"}}}}
  t.ok(vm, err)
end)
