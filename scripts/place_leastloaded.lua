-- place_leastloaded.lua: start each VM on the least loaded node.
--
-- Load is the 1-minute CPU average per core (plus the vCPUs placed by this
-- request); ties go to the node with more free memory. Suggested nodes
-- (req.lnms) are honoured when connected; no fit: "no capacity".

-- Shared helpers (each policy is self-contained: scripts cannot require).
-- nodes(req): connected nodes as small records; when the request suggests
-- nodes (req.lnms) and any of them is connected, only those.
local function nodes(req)
  local all, byname = {}, {}
  for _, n in ipairs(usher.lnms()) do
    if n.connected then
      local r = {name = n.name, cpus = math.max(n.info.cpus, 1), free_mem = n.status.free_mem_mb,
                 free_vcpus = n.status.free_vcpus, load = n.status.usage.cpu.m1, vms = n.status.vms}
      all[#all + 1] = r
      byname[n.name] = r
    end
  end
  local suggested = {}
  for _, name in ipairs(req.lnms or {}) do
    if byname[name] then suggested[#suggested + 1] = byname[name] end
  end
  if #suggested > 0 then return suggested end
  return all
end

local function fits(n, vm)
  return n.free_mem >= (vm.mem_mb or 0) and n.free_vcpus >= (vm.vcpus or 0)
end

-- take reserves vm's resources on n for the rest of this request.
local function take(n, vm)
  n.free_mem = n.free_mem - (vm.mem_mb or 0)
  n.free_vcpus = n.free_vcpus - (vm.vcpus or 0)
  n.vms = n.vms + 1
  n.load = n.load + (vm.vcpus or 1)
end

local function per_cpu(n) return n.load / n.cpus end

-- place runs choose(candidates, vm) for every VM without a node and drops
-- the VMs that fit nowhere with reason "no capacity".
local function place(req, choose)
  local ns = nodes(req)
  local full = {}
  for _, vm in ipairs(req.vms) do
    if (vm.lnm or "") == "" then
      local fitting = {}
      for _, n in ipairs(ns) do
        if fits(n, vm) then fitting[#fitting + 1] = n end
      end
      local n = #fitting > 0 and choose(fitting, vm) or nil
      if n then
        vm.lnm = n.name
        take(n, vm)
      else
        full[#full + 1] = vm.name
      end
    end
  end
  for _, name in ipairs(full) do req:drop(name, "no capacity") end
end

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  local ns = nodes(req)
  local full = {}
  for _, vm in ipairs(req.vms) do
    if (vm.target or "") == "" then
      local best
      for _, n in ipairs(ns) do
        if n.name ~= vm.lnm and fits(n, vm) and (not best or per_cpu(n) < per_cpu(best)) then best = n end
      end
      if best then
        vm.target = best.name
        take(best, vm)
      else
        full[#full + 1] = vm.name
      end
    end
  end
  for _, name in ipairs(full) do req:drop(name, "no capacity") end
end, {order = 50, name = "migrate_target"})

usher.on("start_request", function(req)
  place(req, function(fitting, vm)
    local best
    for _, n in ipairs(fitting) do
      if not best or per_cpu(n) < per_cpu(best)
         or (per_cpu(n) == per_cpu(best) and n.free_mem > best.free_mem) then
        best = n
      end
    end
    return best
  end)
end, {order = 50, name = "place"})
