-- qos.lua: guaranteed or best-effort VMs.
--
-- `start -n db -c 2 qos=guaranteed` asks for guaranteed VMs: their vCPUs
-- and memory are never overcommitted (the controller counts them against
-- what each node can guarantee, its host CPUs, and refuses a node that
-- cannot) and the node gives them a large CPU weight. Best-effort VMs,
-- the default, share what a node offers, overcommitted as the node is
-- configured (lnm.libvirt_vcpu_overcommit). Runs before placement
-- (order 40), which reads data.qos. A VM's class is fixed for its life.
--
-- Config:
--   default = "best-effort"                        -- or "guaranteed"
--   guaranteed = {users = {"alice"}, groups = {"hpc"}} -- who may ask (absent: everyone)

local cfg = usher.config
local default = cfg.default or "best-effort"
local classes = {guaranteed = true, ["best-effort"] = true}

local function may_guarantee(user)
  local g = cfg.guaranteed
  if not g or user.admin then return true end
  for _, u in ipairs(g.users or {}) do if u == user.user then return true end end
  for _, want in ipairs(g.groups or {}) do
    for _, have in ipairs(user.groups or {}) do if want == have then return true end end
  end
  return false
end

usher.on("start_request", function(req)
  local class = req.args.qos or default
  if not classes[class] then
    return usher.reject(string.format("qos %q: guaranteed or best-effort", class))
  end
  if class == "guaranteed" and not may_guarantee(req.user) then
    return usher.reject("guaranteed VMs are reserved to other users (qos=best-effort)")
  end
  for _, vm in ipairs(req.vms) do vm.data.qos = class end
end, {order = 40, name = "qos"})
