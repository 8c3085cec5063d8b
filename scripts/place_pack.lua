-- place_pack.lua: keep the number of active nodes small.
--
-- A VM goes to a node that already runs VMs (best fit: the least free
-- memory that still fits); only when none fits is an idle node used. Good
-- for power saving at night; see usher.set_active to swap with a spreading
-- policy by day.

-- Shared helpers (nodes, fits, take, place, migrate): lib/placement.lua.
local placement = require("placement")

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  placement.migrate(req)
end, {order = 50, name = "migrate_target"})

usher.on("start_request", function(req)
  placement.place(req, function(fitting, vm)
    local best
    for _, n in ipairs(fitting) do
      local active, bactive = n.vms > 0, best and best.vms > 0
      if not best or (active and not bactive)
         or (active == bactive and n.free_mem < best.free_mem) then
        best = n
      end
    end
    return best
  end)
end, {order = 50, name = "place"})
