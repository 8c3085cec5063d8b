-- quota.lua: at most config max_vms (default 20) VMs per user.
--
-- "Do the best I can": a start request that would exceed the quota is
-- trimmed to what is still allowed; the dropped VMs carry the reason
-- "quota: N of M allowed" (N allowed out of M requested).
-- Config: max_vms = 20, exempt_admins = false.

local max_vms = tonumber(usher.config.max_vms) or 20
local exempt_admins = usher.config.exempt_admins == true

usher.on("start_request", function(req)
  if exempt_admins and req.user.admin then return end
  local allowed = math.max(0, max_vms - usher.count(req.user.user))
  local n = #req.vms
  if n <= allowed then return end
  local reason = string.format("quota: %d of %d allowed", allowed, n)
  local extra = {}
  for i = allowed + 1, n do extra[#extra + 1] = req.vms[i].name end
  for _, name in ipairs(extra) do req:drop(name, reason) end
end, {order = 20, name = "max_vms"})
