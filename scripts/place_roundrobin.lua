-- place_roundrobin.lua: start VMs on connected nodes in turn.
--
-- The rotation position survives restarts in usher.store
-- ("place_roundrobin.next"). Suggested nodes (req.lnms) are honoured when
-- connected; a VM that fits nowhere is dropped with "no capacity".

-- Shared helpers (nodes, fits, take, place, migrate): lib/placement.lua.
local placement = require("placement")

-- Migration without an explicit target: the least loaded fitting node
-- (among req.lnms when suggested), never the VM's current node.
usher.on("migrate_request", function(req)
  placement.migrate(req)
end, {order = 50, name = "migrate_target"})

usher.on("start_request", function(req)
  local pos = tonumber(usher.store.get("place_roundrobin.next")) or 0
  placement.place(req, function(fitting, vm)
    -- the first fitting node at or after the rotation position, by name order
    table.sort(fitting, function(a, b) return a.name < b.name end)
    local n = fitting[(pos % #fitting) + 1]
    pos = pos + 1
    return n
  end)
  usher.store.set("place_roundrobin.next", pos)
end, {order = 50, name = "place"})
