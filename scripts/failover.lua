-- failover.lua: restart the VMs of a lost node elsewhere, once it is fenced.
--
-- Every config interval (default "10s"), a node disconnected for longer
-- than config grace (default "1m") that still holds lost VMs is fenced:
-- the controller runs the site's fencing command (controller.fence_command,
-- e.g. an IPMI power-off). Only when it confirms are the node's lost VMs
-- restarted elsewhere from their kept objects (name, allocation, data);
-- placement chooses the nodes (migrate_request, req.kind "failover"). A VM
-- with data failover = "none" stays lost. A fence that fails or times out
-- restarts nothing and is tried again after config retry (default "1m").
-- A fenced node that comes back has its stale copies destroyed by the
-- controller, never adopted twice.
-- Config: interval = "10s", grace = "1m", retry = "1m".

local cfg = usher.config
local function seconds(s, default)
  s = s or default
  local n, unit = tostring(s):match("^(%d+%.?%d*)(%a*)$")
  n = tonumber(n) or 0
  return n * (({ms = 0.001, s = 1, m = 60, h = 3600})[unit] or 1)
end
local grace = seconds(cfg.grace, "1m")
local retry = cfg.retry or "1m"

local function lost_vms(node)
  local out = {}
  for _, vm in ipairs(usher.vms{lnm = node.name}) do
    if vm.state == "lost" and (vm.data.failover or "restart") ~= "none" then out[#out + 1] = vm.name end
  end
  return out
end

usher.every(cfg.interval or "10s", function()
  local now = usher.time()
  for _, node in ipairs(usher.lnms()) do
    if node.state == "disconnected" and now - node.since >= grace then
      local vms = lost_vms(node)
      if #vms > 0 and not usher.store.get("fence_failed." .. node.name) then
        local ok, err = true, nil
        if not node.fenced then ok, err = usher.fence(node.name) end
        if not ok then
          usher.store.set("fence_failed." .. node.name, err, retry)
          usher.log.error("failover: fence failed; nothing restarted", "lnm", node.name, "err", err)
        else
          local res, ferr = usher.failover(vms)
          if not res then
            usher.log.error("failover failed", "lnm", node.name, "err", ferr)
          else
            usher.log.warn("failover: restarted VMs of a fenced node", "lnm", node.name, "vms", res.ok, "of", #vms)
            local bad = #vms - res.ok
            usher.lnm_notice(node.name, string.format("fenced; %d of %d lost VMs restarted elsewhere%s", res.ok, #vms,
              bad > 0 and string.format(" (%d not yet: tried again)", bad) or ""))
          end
        end
      end
    end
  end
end, {name = "failover"})
