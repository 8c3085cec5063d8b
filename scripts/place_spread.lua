-- place_spread.lua: VMs of one virtual cluster on distinct nodes.
--
-- Each VM goes to the fitting node holding the fewest VMs of its cluster
-- (existing ones and those placed by this request); ties go to the node
-- with more free memory. When there are more VMs than nodes, nodes are
-- shared as evenly as possible.

-- Shared helpers (nodes, fits, take, place, migrate): lib/placement.lua.
local placement = require("placement")

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  placement.migrate(req)
end, {order = 50, name = "migrate_target"})

usher.on("start_request", function(req)
  local count = {} -- cluster -> node -> VMs
  local function counts(vm)
    local key = vm.owner .. "/" .. vm.cluster
    if not count[key] then
      local c = {}
      for _, v in ipairs(usher.vms{owner = vm.owner, cluster = vm.cluster}) do
        c[v.lnm] = (c[v.lnm] or 0) + 1
      end
      count[key] = c
    end
    return count[key]
  end
  placement.place(req, function(fitting, vm)
    local c = counts(vm)
    local best
    for _, n in ipairs(fitting) do
      local k, bk = c[n.name] or 0, best and (c[best.name] or 0)
      if not best or k < bk or (k == bk and n.free_mem > best.free_mem) then best = n end
    end
    c[best.name] = (c[best.name] or 0) + 1
    return best
  end)
end, {order = 50, name = "place"})
