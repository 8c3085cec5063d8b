-- authz_owner.lua: users see and act only on their own VMs.
--
-- On authorize: administrators (identity.admin, or member of
-- config admin_group, default "admin") may do anything. Everyone else:
--   * VMs owned by someone else are dropped with reason "not yours";
--   * listing everyone's VMs (list with all=true) is rejected;
--   * admin requests are rejected.

local admin_group = usher.config.admin_group or "admin"

local function is_admin(user)
  if user.admin then return true end
  for _, g in ipairs(user.groups or {}) do
    if g == admin_group then return true end
  end
  return false
end

usher.on("authorize", function(req)
  if is_admin(req.user) then return end
  if req.kind == "list" and req.all then
    return usher.reject("only administrators may list everyone's VMs")
  end
  if req.kind == "admin" then
    return usher.reject("administrators only")
  end
  local others = {}
  for _, vm in ipairs(req.vms) do
    if vm.owner ~= req.user.user then others[#others + 1] = vm.name end
  end
  for _, name in ipairs(others) do req:drop(name, "not yours") end
end, {order = 10, name = "owner"})
