-- Fixture tests for reservations.lua (with least-loaded placement after it).
local t = usher_test
t.load{"reservations", "place_leastloaded"}
t.config{reservations = {max_length = "8h"}}

local function fixture(state)
  t.fixture{
    lnms = {{name = "n1"}, {name = "n2"}, {name = "n3", cpu_m1 = 0}},
    reservations = {{id = "r-0000000000a1", owner = "alice", mem_mb = 2048, vcpus = 2, lnms = {"n1", "n2"}, state = state or "active"}},
    vms = {{short = "j1", owner = "alice", lnm = "n1", mem_mb = 1024, vcpus = 1, data = {reservation = "r-0000000000a1"}}},
  }
end

t.case("VMs under a reservation go where it has room", function()
  fixture()
  local r, err = t.request("start_request", {user = "alice", cluster = "job", args = {reservation = "r-0000000000a1"},
    vms = {{short = "job1", mem_mb = 1024, vcpus = 1}, {short = "job2", mem_mb = 2048, vcpus = 2}, {short = "job3", mem_mb = 1024, vcpus = 1}}})
  t.eq(err, nil)
  t.eq(r.by_short.job1.lnm, "n1")
  t.eq(r.by_short.job1.data.reservation, "r-0000000000a1")
  t.eq(r.by_short.job2.lnm, "n2")
  t.eq(#r.dropped, 1)
  t.eq(r.dropped[1].reason, "reservation r-0000000000a1 is full")
end)

t.case("only its owner, only while active", function()
  fixture()
  local r = t.request("start_request", {user = "bob", cluster = "x", args = {reservation = "r-0000000000a1"}, vms = {{short = "x1"}}})
  t.ok(r.rejected and r.rejected:find("no reservation", 1, true), r.rejected)
  fixture("pending")
  r = t.request("start_request", {user = "alice", cluster = "x", args = {reservation = "r-0000000000a1"}, vms = {{short = "x1"}}})
  t.ok(r.rejected and r.rejected:find("pending", 1, true), r.rejected)
end)

t.case("without a reservation: placement as usual", function()
  fixture()
  local r = t.request("start_request", {user = "alice", cluster = "x", vms = {{short = "x1"}}})
  t.eq(r.vms[1].data.reservation, nil)
  t.ok(r.vms[1].lnm ~= nil)
end)

t.case("when it ends its running VMs are shut down", function()
  fixture("ended")
  t.eq(t.notify{type = "reservation", detail = {id = "r-0000000000a1", state = "ended"}}, nil)
  local acts = t.actions()
  t.eq(#acts, 1)
  t.eq(acts[1].kind, "op")
  t.eq(acts[1].op, "shutdown")
  t.eq(acts[1].vms, {"j1.alice.usher.test"})
  -- and the sweep finds it too
  t.tick("reservations")
  t.eq(#t.actions(), 2)
end)

t.case("owners extend within max_length; admins beyond", function()
  fixture()
  local req = {user = "alice", kind = "reservation", args = {action = "extend", id = "r-0000000000a1", start = "0", ["end"] = "3600", new_end = "7200"}}
  local r = t.request("authorize", req)
  t.eq(r.rejected, nil)
  req.args.new_end = tostring(9 * 3600)
  r = t.request("authorize", req)
  t.ok(r.rejected and r.rejected:find("max_length", 1, true), r.rejected)
  req.user = {user = "root", admin = true}
  t.eq(t.request("authorize", req).rejected, nil)
end)
