-- nfs_dirs.lua: writable NFS directories for VMs (the UCSD filesystem plugin).
--
-- Before a VM starts (register_vm) it makes sure these exist below root:
--   <root>/global                          shared by every VM   (/net/global in the VM)
--   <root>/clusters/<owner>/<cluster>      the VM's cluster     (/net/cluster)
--   <root>/vms/<owner>/<vm>                the VM itself        (/net/local)
-- each with a System V style init folder structure (etc/init.d, etc/rcN.d),
-- whose scripts the VM image runs at boot after its own. The paths are put
-- in vm.data.nfs_global / nfs_cluster / nfs_local. After the VM is destroyed
-- (or its start failed) its folder is removed, and the cluster folder too
-- once the cluster has no VM left. A failure keeps the VM from starting.
--
-- Needs the fs module (root must lie below [policy.modules.fs] roots). Config:
--   root = "/srv/usher"
--   owner = "vm"       chown the cluster and VM folders to the VM's owner
--                      (a local user of that name must exist); or a fixed
--                      user name / uid; default: leave as the controller's user
--   group = "usher"    group of the folders (name or gid), optional
--   mode = "0775"      folder mode
--   init_dirs = {"etc/init.d", "etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d"}

local cfg = usher.config
local mode = cfg.mode or "0775"
local init_dirs = cfg.init_dirs or {"etc/init.d", "etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d"}

local function root() return cfg.root or fs.roots[1] end

local function paths(vm)
  local r = root()
  return r .. "/global", r .. "/clusters/" .. vm.owner .. "/" .. vm.cluster, r .. "/vms/" .. vm.owner .. "/" .. vm.short
end

local function attrs(vm, shared)
  local a = {mode = mode, group = cfg.group}
  if not shared then
    if cfg.owner == "vm" then a.owner = vm.owner elseif cfg.owner then a.owner = cfg.owner end
  end
  return a
end

local function prepare(dir, a)
  local ok, err = fs.mkdir(dir, a)
  if not ok then return nil, err end
  for _, sub in ipairs(init_dirs) do
    ok, err = fs.mkdir(dir .. "/" .. sub, a)
    if not ok then return nil, err end
  end
  return true
end

usher.on("register_vm", function(req, vm)
  local g, c, l = paths(vm)
  for _, step in ipairs({{g, attrs(vm, true)}, {c, attrs(vm, false)}, {l, attrs(vm, false)}}) do
    local ok, err = prepare(step[1], step[2])
    if not ok then
      usher.log.error("nfs_dirs: preparing folders failed", "vm", vm.name, "err", err)
      return usher.reject("nfs_dirs: " .. tostring(err))
    end
  end
  vm.data.nfs_global, vm.data.nfs_cluster, vm.data.nfs_local = g, c, l
end, {order = 75, name = "prepare"})

local function cleanup(vm)
  local _, c, l = paths(vm)
  local ok, err = fs.rmtree(l)
  if not ok then usher.log.error("nfs_dirs: removing VM folder failed", "vm", vm.name, "err", err) end
  if #usher.vms{owner = vm.owner, cluster = vm.cluster} == 0 then
    ok, err = fs.rmtree(c)
    if not ok then usher.log.error("nfs_dirs: removing cluster folder failed", "dir", c, "err", err) end
  end
end

usher.on("op_complete", function(ev)
  if ev.vm and ev.ok and ev.detail.op == "destroy" then cleanup(ev.vm) end
end, {name = "destroy"})

usher.on("start_complete", function(ev)
  if ev.vm and not ev.ok and ev.vm.state == "failed" then cleanup(ev.vm) end
end, {name = "start_failed"})
