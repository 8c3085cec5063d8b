-- drain.lua: empty the nodes an admin drains (lnm drain NODE).
--
-- Every config interval (default "2s"), for each draining node, each VM
-- that still takes its resources leaves by the strategy in its data
-- ("drain", else config strategy, default "migrate"):
--   migrate   live migration to an active node (placement chooses which)
--   shutdown  a clean shutdown: it stays defined, shut off, on the node
--   stop      a shutdown forced if the guest does not honour it in time
-- At most config max_parallel (default 4) VMs are moved per tick, in one
-- request (their migrations run side by side). What cannot move (no node
-- with room, a refusing target) is the node's notice, shown by lnms, and
-- is tried again next tick: nothing is forgotten. A node that disconnects
-- mid-drain waits (its VMs are lost, not moved) and goes on when it is
-- back. The controller marks an empty draining node maintenance.
-- Config: interval = "2s", max_parallel = 4, strategy = "migrate".

local cfg = usher.config
local max_parallel = tonumber(cfg.max_parallel) or 4
local default = cfg.strategy or "migrate"
local strategies = {migrate = true, shutdown = true, stop = true}

-- moving reports whether a VM in state st takes its node's resources and
-- can be moved now (starting and migrating VMs are waited for).
local movable = {running = true, paused = true}
local waiting = {starting = true, pending = true, migrating = true, lost = true}

local function drain(node, budget)
  local left, wait, moves, stops, failed = 0, 0, {}, {shutdown = {}, stop = {}}, {}
  for _, vm in ipairs(usher.vms{lnm = node.name}) do
    if movable[vm.state] then
      left = left + 1
      local how = vm.data.drain or default
      if not strategies[how] then
        failed[#failed + 1] = vm.name .. " (unknown drain strategy " .. how .. ")"
      elseif budget > 0 then
        budget = budget - 1
        if how == "migrate" then moves[#moves + 1] = vm.name else table.insert(stops[how], vm.name) end
      end
    elseif waiting[vm.state] then
      left, wait = left + 1, wait + 1
    end
  end
  local moved = 0
  local function collect(res, err, names)
    if not res then
      for _, n in ipairs(names) do failed[#failed + 1] = n .. " (" .. err .. ")" end
      return
    end
    for _, d in ipairs(res.done) do
      if d.ok then moved = moved + 1 else failed[#failed + 1] = d.name .. " (" .. (d.error or "failed") .. ")" end
    end
    for _, d in ipairs(res.dropped) do failed[#failed + 1] = d.vm .. " (" .. d.reason .. ")" end
  end
  if #moves > 0 then collect(usher.migrate(moves), nil, moves) end
  for how, names in pairs(stops) do
    if #names > 0 then
      local res, err = usher.op("shutdown", names, how == "stop" and {force = "true"} or nil)
      collect(res, err, names)
    end
  end
  local notice = string.format("draining: %d VMs left", left - moved)
  if wait > 0 then notice = notice .. string.format(" (%d starting, migrating or lost)", wait) end
  if #failed > 0 then
    table.sort(failed)
    notice = notice .. "; cannot move: " .. table.concat(failed, ", ", 1, math.min(#failed, 5))
    if #failed > 5 then notice = notice .. string.format(" and %d more", #failed - 5) end
    usher.log.warn("drain: VMs could not leave", "lnm", node.name, "vms", #failed, "first", failed[1])
  end
  -- Once the last VM left, the controller's own notice ("drained") stands.
  if left - moved > 0 or #failed > 0 then usher.lnm_notice(node.name, notice) end
  return budget
end

usher.every(cfg.interval or "2s", function()
  local budget = max_parallel
  for _, node in ipairs(usher.lnms{mode = "draining"}) do
    if not node.connected then
      usher.lnm_notice(node.name, "draining, but disconnected: its VMs are lost until it is back")
    elseif budget > 0 then
      budget = drain(node, budget)
    end
  end
end, {name = "drain"})
