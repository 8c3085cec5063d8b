-- images.lua: which image of the site image store a new VM boots from.
--
-- `start -n web -c 3 image=debian-small` asks for an image; without one a
-- VM gets config default (none: no image, the node's default kernel). An
-- image the store lacks is refused, naming those it has; an image
-- reserved to some users or groups is refused to others; a VM's memory
-- is raised to the image's min_mem_mb before placement.
--
-- Config:
--   default = "debian-small"
--   restrict = {gpu = {users = {"alice"}, groups = {"ml"}}}  -- image → who may use it

local cfg = usher.config
local restrict = cfg.restrict or {}

local function allowed(name, user)
  local r = restrict[name]
  if not r then return true end
  for _, u in ipairs(r.users or {}) do if u == user.user then return true end end
  for _, g in ipairs(r.groups or {}) do
    for _, ug in ipairs(user.groups or {}) do if g == ug then return true end end
  end
  return false
end

usher.on("start_request", function(req)
  local name = req.args.image or cfg.default
  if not name or name == "" then return end
  local im = usher.image(name)
  if not im then
    local have = {}
    for _, i in ipairs(usher.images()) do
      if allowed(i.name, req.user) then have[#have + 1] = i.name end
    end
    return usher.reject(string.format("no image %q (images: %s)", name, table.concat(have, ", ")))
  end
  if not allowed(name, req.user) then
    return usher.reject(string.format("image %q is reserved to other users", name))
  end
  for _, vm in ipairs(req.vms) do
    vm.data.image = name
    if vm.mem_mb < im.min_mem_mb then vm.mem_mb = im.min_mem_mb end
  end
end, {order = 30, name = "choose"})
