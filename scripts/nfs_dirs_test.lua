-- Fixture tests for nfs_dirs.lua (in-memory directory tree); the real
-- folders, owners and modes are checked in lua/modules/sitetest.
local t = usher_test
t.config{nfs_dirs = {root = "/srv/usher"}}

t.case("prepares global, cluster and VM folders", function()
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web"}}}
  t.ok(vm, err)
  t.eq(vm.data.nfs_global, "/srv/usher/global")
  t.eq(vm.data.nfs_cluster, "/srv/usher/clusters/alice/web")
  t.eq(vm.data.nfs_local, "/srv/usher/vms/alice/web1")
end)

t.case("a root outside the configured roots is refused", function()
  t.config{nfs_dirs = {root = "/etc"}}
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web"}}}
  t.eq(vm, nil)
  t.ok(err:find("not below a configured root"), err)
end)

t.case("file server failure keeps the VM from starting", function()
  t.config{nfs_dirs = {root = "/srv/usher", fake_down = {"fs"}}}
  local vm, err = t.register_vm{user = "alice", vms = {{short = "web1", cluster = "web"}}}
  t.eq(vm, nil)
  t.ok(err:find("nfs_dirs"), err)
end)
