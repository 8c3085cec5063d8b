-- rebalance.lua: move load off hot nodes, and then let it settle.
--
-- Every config interval (default "5m") the hottest active node whose
-- 5-minute CPU average per core exceeds config high (default 0.8) gives
-- its busiest running VM that fits to the coolest active node, if that
-- node stays below config low (default 0.6) with it and the move narrows
-- the gap. At most config max_moves (default 1) moves a pass.
--
-- It settles: the 5-minute average lags, so for config settle (default
-- "10m") the CPU of each VM moved is counted on its new node and not on
-- its old one; a VM moved is not moved again for config cooldown (default
-- "30m"). Nodes that are isolated, draining or in maintenance are neither
-- sources nor targets. A node joining, coming back or being restored is
-- cool: a pass runs at once instead of at the next interval.
-- Config: interval = "5m", high = 0.8 (or threshold), low = 0.6,
-- max_moves = 1, settle = "10m", cooldown = "30m".

local cfg = usher.config
local high = tonumber(cfg.high or cfg.threshold) or 0.8
local low = tonumber(cfg.low) or math.min(0.6, high)
local max_moves = tonumber(cfg.max_moves) or 1
local settle = cfg.settle or "10m"
local cooldown = cfg.cooldown or "30m"
local store = usher.store

local function cpu(vm) return vm.usage and vm.usage.cpu.m5 or 0 end

-- moved(): CPU moved onto (+) or off (-) each node within the settle
-- time (two store reads a pass, whatever the number of nodes).
local function moved()
  local by = {}
  for prefix, sign in pairs({["in."] = 1, ["out."] = -1}) do
    for k, v in pairs(store.list(prefix, {limit = 10000})) do
      local node = k:sub(#prefix + 1):match("^([^.]+)%.")
      if node then by[node] = (by[node] or 0) + sign * tonumber(v) end
    end
  end
  return by
end

local function pass()
  local nodes, by = {}, moved()
  for _, n in ipairs(usher.lnms{connected = true}) do -- active nodes only
    if n.info.cpus > 0 then
      nodes[#nodes + 1] = {node = n, cpus = n.info.cpus,
                           load = (n.status.usage.cpu.m5 + (by[n.name] or 0)) / n.info.cpus}
    end
  end
  for _ = 1, max_moves do
    local hot, cool
    for _, e in ipairs(nodes) do
      if e.load > high and (not hot or e.load > hot.load) then hot = e end
      if not cool or e.load < cool.load then cool = e end
    end
    if not hot or not cool or hot == cool then return end
    local best
    for _, vm in ipairs(usher.vms{lnm = hot.node.name}) do
      local c = cpu(vm)
      if vm.state == "running" and not store.get("cool." .. vm.name)
         and vm.mem_mb <= cool.node.status.free_mem_mb and vm.vcpus <= cool.node.status.free_vcpus
         and cool.load + c / cool.cpus < low and cool.load + c / cool.cpus < hot.load - c / hot.cpus
         and (not best or c > best.cpu) then
        best = {vm = vm, cpu = c}
      end
    end
    if not best then return end
    local name = best.vm.name
    usher.log.info("rebalancing", "vm", name, "from", hot.node.name, "to", cool.node.name,
                   "load", string.format("%.2f", hot.load), "target_load", string.format("%.2f", cool.load))
    local res, err = usher.migrate({name}, {cool.node.name})
    if not res or res.ok ~= 1 then
      usher.log.warn("rebalance migration failed", "vm", name,
                     "err", err or (res.done[1] and res.done[1].error) or (res.dropped[1] and res.dropped[1].reason))
      store.set("cool." .. name, "failed", cooldown) -- not again at once
      return
    end
    store.set("cool." .. name, "moved", cooldown)
    store.set("out." .. hot.node.name .. "." .. name, best.cpu, settle)
    store.set("in." .. cool.node.name .. "." .. name, best.cpu, settle)
    hot.load = hot.load - best.cpu / hot.cpus
    cool.load = cool.load + best.cpu / cool.cpus
  end
end

usher.every(cfg.interval or "5m", pass, {name = "rebalance"})

-- A node that joins, comes back or is restored takes load at once.
usher.on("lnm_connected", pass, {name = "rebalance_joined"})
usher.on("lnm_mode", function(ev)
  if ev.detail.mode == "active" and ev.detail.previous ~= "active" then pass() end
end, {name = "rebalance_restored"})
