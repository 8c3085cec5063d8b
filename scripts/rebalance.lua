-- rebalance.lua: move load off hot nodes.
--
-- Every config interval (default "5m"), if a connected node's 5-minute CPU
-- average per core exceeds config threshold (default 0.8), migrate one
-- running VM (the busiest that fits) from the hottest node to the least
-- loaded node, provided that node is below the threshold itself.
-- Config: interval = "5m", threshold = 0.8.

local interval = usher.config.interval or "5m"
local threshold = tonumber(usher.config.threshold) or 0.8

usher.every(interval, function(ev)
  local hot, cool
  for _, n in ipairs(usher.lnms()) do
    if n.connected and n.info.cpus > 0 then
      local load = n.status.usage.cpu.m5 / n.info.cpus
      if load > threshold and (not hot or load > hot.load) then hot = {node = n, load = load} end
      if not cool or load < cool.load then cool = {node = n, load = load} end
    end
  end
  if not hot or not cool or hot.node.name == cool.node.name or cool.load >= threshold then
    return
  end
  local best
  for _, vm in ipairs(usher.vms{lnm = hot.node.name}) do
    if vm.state == "running" and vm.mem_mb <= cool.node.status.free_mem_mb
       and vm.vcpus <= cool.node.status.free_vcpus then
      local cpu = vm.usage and vm.usage.cpu.m5 or 0
      if not best or cpu > best.cpu then best = {vm = vm, cpu = cpu} end
    end
  end
  if not best then return end
  usher.log.info("rebalancing", "vm", best.vm.name, "from", hot.node.name, "to", cool.node.name,
                 "load", hot.load)
  local res, err = usher.migrate({best.vm.name}, {cool.node.name})
  if not res then usher.log.warn("rebalance migration failed", "vm", best.vm.name, "err", err) end
end, {name = "rebalance"})
