-- place_leastloaded.lua: start each VM on the least loaded node.
--
-- Load is the 1-minute CPU average per core (plus the vCPUs placed by this
-- request); ties go to the node with more free memory. Suggested nodes
-- (req.lnms) are honoured when connected; no fit: "no capacity".

-- nodes(req): the connected nodes that can take the smallest VM of the
-- request, least loaded first, at most a few more than the request needs
-- (usher.lnms filters and orders in Go, so this stays cheap on sites with
-- thousands of nodes). Suggested nodes (req.lnms) are used when any of
-- them qualifies.
local function nodes(req)
  local mem, cpus = math.huge, math.huge
  for _, vm in ipairs(req.vms) do
    mem = math.min(mem, vm.mem_mb or 0)
    cpus = math.min(cpus, vm.vcpus or 0)
  end
  if mem == math.huge then mem, cpus = 0, 0 end
  local q = {connected = true, order_by = "load", mem_mb = mem, vcpus = cpus,
             limit = math.min(2 * #req.vms + 8, 512)}
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
                     free_vcpus = n.status.free_vcpus, load = n.status.usage.cpu.m1, vms = n.status.vms}
  end
  return out
end

-- fits, take and per_cpu are shared with the other placement policies
-- (lib/placement.lua); locals keep the heap loops below as cheap as before.
local placement = require("placement")
local fits, take, per_cpu = placement.fits, placement.take, placement.per_cpu

-- A binary min-heap of nodes by load per CPU (ties: more free memory), so
-- placing B VMs on K candidates costs O(B log K), not O(B * K).
local function before(a, b)
  local la, lb = per_cpu(a), per_cpu(b)
  if la ~= lb then return la < lb end
  return a.free_mem > b.free_mem
end

local function push(h, n)
  h[#h + 1] = n
  local i = #h
  while i > 1 do
    local p = math.floor(i / 2)
    if not before(h[i], h[p]) then break end
    h[i], h[p] = h[p], h[i]
    i = p
  end
end

local function pop(h)
  local top, last = h[1], h[#h]
  h[#h] = nil
  if #h > 0 then
    h[1] = last
    local i = 1
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= #h and before(h[l], h[m]) then m = l end
      if r <= #h and before(h[r], h[m]) then m = r end
      if m == i then break end
      h[i], h[m] = h[m], h[i]
      i = m
    end
  end
  return top
end

-- place puts every VM without a node on the least loaded node that fits it
-- and drops the VMs that fit nowhere with reason "no capacity".
local function place(req)
  local h = {}
  for _, n in ipairs(nodes(req)) do push(h, n) end
  local full = {}
  for _, vm in ipairs(req.vms) do
    if (vm.lnm or "") == "" then
      local skipped, chosen = {}, nil
      while #h > 0 do
        local n = pop(h)
        if fits(n, vm) then chosen = n; break end
        skipped[#skipped + 1] = n
      end
      if chosen then
        vm.lnm = chosen.name
        take(chosen, vm)
        push(h, chosen)
      else
        full[#full + 1] = vm.name
      end
      for _, n in ipairs(skipped) do push(h, n) end
    end
  end
  for _, name in ipairs(full) do req:drop(name, "no capacity") end
end

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  placement.migrate(req, nodes)
end, {order = 50, name = "migrate_target"})

usher.on("start_request", function(req)
  place(req)
end, {order = 50, name = "place"})
