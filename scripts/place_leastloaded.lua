-- place_leastloaded.lua: start each VM on the least loaded node.
--
-- Load is the 1-minute CPU average per core (plus the vCPUs placed by this
-- request); ties go to the node with more free memory. Suggested nodes
-- (req.lnms) are honoured when connected; no fit: "no capacity".

-- nodes(req): the connected nodes that can take the smallest VM of the
-- request, least loaded first, at most a few more than the request needs
-- (usher.lnms filters and orders in Go, so this stays cheap on sites with
-- thousands of nodes). A single VM is the smallest, so every candidate fits
-- it and four are plenty (each candidate costs a table here). Suggested
-- nodes (req.lnms) are used when any of them qualifies.
-- query runs usher.lnms(q) over the suggested nodes (req.lnms) when any of
-- them qualifies, else over all nodes.
local function query(req, q)
  if req.lnms and #req.lnms > 0 then
    q.names = req.lnms
    local found = usher.lnms(q)
    q.names = nil
    if #found > 0 then return found end
  end
  return usher.lnms(q)
end

local function nodes(req)
  local mem, cpus = math.huge, math.huge
  for _, vm in ipairs(req.vms) do
    mem = math.min(mem, vm.mem_mb or 0)
    cpus = math.min(cpus, vm.vcpus or 0)
  end
  if mem == math.huge then mem, cpus = 0, 0 end
  local q = {connected = true, order_by = "load", mem_mb = mem, vcpus = cpus,
             limit = #req.vms == 1 and 4 or math.min(2 * #req.vms + 8, 512)}
  local out = {}
  for _, n in ipairs(query(req, q)) do
    out[#out + 1] = {name = n.name, cpus = math.max(n.info.cpus, 1), free_mem = n.status.free_mem_mb,
                     free_vcpus = n.status.free_vcpus, free_gvcpus = n.status.free_guaranteed_vcpus,
                     load = n.status.usage.cpu.m1, vms = n.status.vms}
  end
  return out
end

-- fits and take are shared with the other placement policies
-- (lib/placement.lua).
local placement = require("placement")
local fits, take = placement.fits, placement.take

-- A binary min-heap of nodes by load per CPU (ties: more free memory), so
-- placing B VMs on K candidates costs O(B log K), not O(B * K). Each node
-- record carries its key (load per CPU), updated when a VM is placed on it.
local function before(a, b)
  local ka, kb = a.key, b.key
  if ka ~= kb then return ka < kb end
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

-- down moves h[i] down to its place.
local function down(h, i)
  local n, x = #h, h[i]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and before(h[c + 1], h[c]) then c = c + 1 end
    if not before(h[c], x) then break end
    h[i] = h[c]
    i = c
  end
  h[i] = x
end

local function pop(h)
  local top, last = h[1], h[#h]
  h[#h] = nil
  if #h > 0 then
    h[1] = last
    down(h, 1)
  end
  return top
end

-- place puts every VM without a node on the least loaded node that fits it
-- and drops the VMs that fit nowhere with reason "no capacity". The usual
-- case — the least loaded node fits — updates that node in place and moves
-- it down the heap once.
local function place(req)
  local h = {}
  for _, n in ipairs(nodes(req)) do
    n.key = n.load / n.cpus
    push(h, n)
  end
  local full = {}
  for _, vm in ipairs(req.vms) do
    if (vm.lnm or "") == "" then
      local top = h[1]
      if top and fits(top, vm) then
        vm.lnm = top.name
        take(top, vm)
        top.key = top.load / top.cpus
        down(h, 1)
      else
        local skipped, chosen = {}, nil
        while #h > 0 do
          local n = pop(h)
          if fits(n, vm) then chosen = n; break end
          skipped[#skipped + 1] = n
        end
        if chosen then
          vm.lnm = chosen.name
          take(chosen, vm)
          chosen.key = chosen.load / chosen.cpus
          push(h, chosen)
        else
          full[#full + 1] = vm.name
        end
        for _, n in ipairs(skipped) do push(h, n) end
      end
    end
  end
  for _, name in ipairs(full) do req:drop(name, "no capacity") end
end

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  placement.migrate(req, nodes)
end, {order = 50, name = "migrate_target"})

-- place_one places a request of one VM (the most common kind): the least
-- loaded node that fits it is the first usher.lnms returns when asked for
-- nodes of at least its size, so it needs no candidate records and no heap.
-- Its query table is made once per Lua state and refilled (a table with
-- string keys is the dearest thing a handler can build).
local one = {connected = true, order_by = "load", limit = 1, mem_mb = 0, vcpus = 0}
local function place_one(req, vm)
  one.mem_mb, one.vcpus, one.names = vm.mem_mb or 0, vm.vcpus or 0, nil
  one.guaranteed = placement.guaranteed(vm)
  local found = query(req, one)
  if #found > 0 then
    vm.lnm = found[1].name
  else
    req:drop(vm.name, "no capacity")
  end
end

usher.on("start_request", function(req)
  local vms = req.vms
  if #vms == 1 then
    if (vms[1].lnm or "") == "" then place_one(req, vms[1]) end
    return
  end
  place(req)
end, {order = 50, name = "place"})
