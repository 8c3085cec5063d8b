-- reservations.lua: VMs under reservations, and what happens when one ends.
--
-- An admin reserves resources for a user (ush reserve create); the user
-- starts VMs in it with `start -n job -c 4 reservation=r-0123456789ab`:
-- each VM gets data.reservation and is placed on a node of the reservation
-- with room left in it (before placement, order 45, which leaves placed
-- VMs alone). A VM that no longer fits is dropped ("reservation … is
-- full"); the controller refuses anything else.
--
-- When a reservation ends, its VMs that still run are shut down (forced if
-- the guest does not honour it in time) or destroyed, as the reservation
-- says (on_end); a timer (config interval, default "1m") catches those an
-- event missed. An owner may extend a reservation as long as it then lasts
-- at most config max_length (default "24h") in all; admins always may.
-- Config: interval = "1m", max_length = "24h".

local cfg = usher.config

local function seconds(s)
  local n, unit = tostring(s):match("^(%d+%.?%d*)(%a*)$")
  return (tonumber(n) or 0) * (({ms = 0.001, s = 1, m = 60, h = 3600, d = 86400})[unit] or 1)
end
local max_length = seconds(cfg.max_length or "24h")

usher.on("start_request", function(req)
  local id = req.args.reservation
  if not id then return end
  local r = usher.reservation(id)
  if not r or r.owner ~= req.user.user then
    return usher.reject("no reservation " .. id .. " of yours")
  end
  if r.state ~= "active" then
    return usher.reject(string.format("reservation %s is %s", id, r.state))
  end
  if r.cluster and r.cluster ~= req.cluster then
    return usher.reject(string.format("reservation %s is for cluster %s", id, r.cluster))
  end
  local room = {}
  for _, n in ipairs(r.lnms) do room[n] = {mem = r.unused[n].mem_mb, cpus = r.unused[n].vcpus} end
  local full = {}
  for _, vm in ipairs(req.vms) do
    vm.data.reservation = id
    local placed = false
    for _, n in ipairs(r.lnms) do
      local x = room[n]
      if x.mem >= vm.mem_mb and x.cpus >= vm.vcpus then
        vm.lnm = n
        x.mem, x.cpus = x.mem - vm.mem_mb, x.cpus - vm.vcpus
        placed = true
        break
      end
    end
    if not placed then full[#full + 1] = vm.name end
  end
  for _, name in ipairs(full) do req:drop(name, "reservation " .. id .. " is full") end
end, {order = 45, name = "reservation_place"})

-- finish deals with the VMs of an ended reservation that still run.
local function finish(r)
  local names = {}
  for _, name in ipairs(r.vms) do
    local vm = usher.vm(name)
    if vm and (vm.state == "running" or vm.state == "paused") then names[#names + 1] = name end
  end
  if #names == 0 then return end
  local op = r.on_end == "destroy" and "destroy" or "shutdown"
  local res, err = usher.op(op, names, {force = "true"})
  usher.log.info("reservation ended", "id", r.id, "op", op, "vms", #names, "done", res and res.ok, "err", err)
end

usher.on("reservation", function(ev)
  if ev.detail.state ~= "ended" then return end
  local r = usher.reservation(ev.detail.id)
  if r then finish(r) end
end, {name = "reservation_ended"})

usher.every(cfg.interval or "1m", function()
  for _, r in ipairs(usher.reservations()) do
    if r.state == "ended" then finish(r) end
  end
end, {name = "reservation_sweep"})

usher.on("authorize", function(req)
  if req.kind ~= "reservation" or req.args.action ~= "extend" or req.user.admin then return end
  local length = tonumber(req.args.new_end) - tonumber(req.args.start)
  if length > max_length then
    return usher.reject(string.format("a reservation may last %s in all (config max_length); ask an admin",
      cfg.max_length or "24h"))
  end
end, {order = 5, name = "reservation_extend"})
