-- lib/placement.lua: helpers shared by the placement policies
-- (place_roundrobin, place_leastloaded, place_spread, place_pack).
--
--   local placement = require("placement")
--
-- nodes(req)             connected nodes with room for the request's
--                        smallest VM, as small records (the node query:
--                        filtered in Go); when the request suggests nodes
--                        (req.lnms) and any of them qualifies, only those
-- fits(n, vm)            n has the memory and vCPUs vm asks for (a guaranteed
--                        VM, data.qos = "guaranteed": vCPUs n can guarantee)
-- take(n, vm)            reserve vm's resources on n for the rest of the request
-- per_cpu(n)             n's load per CPU
-- place(req, choose)     choose(candidates, vm) for every VM without a node;
--                        VMs that fit nowhere are dropped with "no capacity"
-- migrate(req, nodes)    migration targets for VMs without one: the least
--                        loaded fitting node other than the current one;
--                        nodes defaults to placement.nodes

local M = {}

function M.nodes(req)
  -- The node query filters in Go (connected, with room for the smallest
  -- VM of the request, among the suggested nodes when any is connected):
  -- only the candidates are handed to Lua.
  local mem, cpus = math.huge, math.huge
  for _, vm in ipairs(req.vms) do
    mem = math.min(mem, vm.mem_mb or 0)
    cpus = math.min(cpus, vm.vcpus or 0)
  end
  if mem == math.huge then mem, cpus = 0, 0 end
  local q = {connected = true, mem_mb = mem, vcpus = cpus}
  local found
  if req.lnms and #req.lnms > 0 then
    q.names = req.lnms
    found = usher.lnms(q)
    q.names = nil
  end
  if not found or #found == 0 then found = usher.lnms(q) end
  local out = {}
  for _, n in ipairs(found) do
    out[#out + 1] = {name = n.name, cpus = math.max(n.info.cpus, 1), free_mem = n.status.free_mem_mb,
                     free_vcpus = n.status.free_vcpus, free_gvcpus = n.status.free_guaranteed_vcpus,
                     load = n.status.usage.cpu.m1, vms = n.status.vms}
  end
  return out
end

local function guaranteed(vm)
  local d = vm.data
  return d ~= nil and d.qos == "guaranteed"
end
M.guaranteed = guaranteed

local function fits(n, vm)
  local free = guaranteed(vm) and (n.free_gvcpus or n.free_vcpus) or n.free_vcpus
  return n.free_mem >= (vm.mem_mb or 0) and free >= (vm.vcpus or 0)
end
M.fits = fits

local function take(n, vm)
  n.free_mem = n.free_mem - (vm.mem_mb or 0)
  n.free_vcpus = n.free_vcpus - (vm.vcpus or 0)
  if n.free_gvcpus then
    if guaranteed(vm) then n.free_gvcpus = n.free_gvcpus - (vm.vcpus or 0) end
    n.free_gvcpus = math.min(n.free_gvcpus, n.free_vcpus)
  end
  n.vms = n.vms + 1
  n.load = n.load + (vm.vcpus or 1)
end
M.take = take

local function per_cpu(n) return n.load / n.cpus end
M.per_cpu = per_cpu

function M.place(req, choose)
  local ns = M.nodes(req)
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

function M.migrate(req, nodes)
  local ns = (nodes or M.nodes)(req)
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
end

return M
