-- ldap_cluster.lua: an LDAP branch per virtual cluster (the UCSD plugin).
--
-- When a user's first VM of a cluster registers, the branch
--   ou=<cluster>-<owner>,ou=clusters,<base>
-- is created with
--   uid=<owner>,ou=<cluster>-<owner>,…   an alias of the user's entry, so the
--                                        user logs into the cluster's VMs with
--                                        the same credentials, and
--   cn=admin,ou=<cluster>-<owner>,…      a groupOfNames whose member is the user
--                                        (VM images grant it sudo, for example).
-- When the last VM of the cluster goes (destroyed, or its start failed),
-- the branch is removed. Creation is idempotent (start_complete makes sure
-- the branch exists too); failures are logged and, with required = true,
-- keep the VM from starting.
--
-- Needs the ldap module. Config:
--   url = "ldaps://…", bind = "admin" (named account allowed to write the branch),
--   base = "dc=example,dc=org", people = "ou=people,<base>",
--   user_filter = "(&(objectClass=posixAccount)(uid=%s))", required = false

local cfg = usher.config
local base = cfg.base or ""
local people = cfg.people or ("ou=people," .. base)
local user_filter = cfg.user_filter or "(&(objectClass=posixAccount)(uid=%s))"
local clusters_dn = "ou=clusters," .. base

local ALREADY, NOSUCH = 68, 32

local function conn() return ldap.conn{url = cfg.url, bind = cfg.bind} end

local function branch_dn(owner, cluster)
  return "ou=" .. ldap.escape_dn(cluster .. "-" .. owner) .. "," .. clusters_dn
end

local function add(c, dn, attrs)
  local ok, err, code = c:add(dn, attrs)
  if ok or code == ALREADY then return true end
  return nil, err
end

-- ensure creates the branch (idempotent).
local function ensure(owner, cluster)
  local c = conn()
  local users, err = c:search{base = people, filter = user_filter, values = {owner}, attrs = {"uid"}, limit = 2}
  if not users then return nil, err end
  if #users ~= 1 then return nil, "no unique LDAP entry for user " .. owner end
  local user_dn = users[1].dn
  local ok
  ok, err = add(c, clusters_dn, {objectClass = {"top", "organizationalUnit"}, ou = "clusters"})
  if not ok then return nil, err end
  local dn = branch_dn(owner, cluster)
  ok, err = add(c, dn, {objectClass = {"top", "organizationalUnit"}, ou = cluster .. "-" .. owner,
    description = "Usher virtual cluster " .. cluster .. " of " .. owner})
  if not ok then return nil, err end
  ok, err = add(c, "uid=" .. ldap.escape_dn(owner) .. "," .. dn,
    {objectClass = {"alias", "extensibleObject"}, uid = owner, aliasedObjectName = user_dn})
  if not ok then return nil, err end
  ok, err = add(c, "cn=admin," .. dn, {objectClass = {"top", "groupOfNames"}, cn = "admin", member = user_dn})
  if not ok then return nil, err end
  return dn
end

-- remove deletes the branch and everything below it (children first).
local function remove(owner, cluster)
  local c = conn()
  local dn = branch_dn(owner, cluster)
  local kids, err = c:search{base = dn, scope = "one", attrs = {"dn"}}
  if not kids then return nil, err end
  for _, k in ipairs(kids) do
    local ok, e, code = c:delete(k.dn)
    if not ok and code ~= NOSUCH then return nil, e end
  end
  local ok, e, code = c:delete(dn)
  if not ok and code ~= NOSUCH then return nil, e end
  return true
end

usher.on("register_vm", function(req, vm)
  if #usher.vms{owner = vm.owner, cluster = vm.cluster} > 0 then return end
  local dn, err = ensure(vm.owner, vm.cluster)
  if not dn then
    usher.log.error("ldap_cluster: creating the cluster branch failed", "cluster", vm.cluster, "owner", vm.owner, "err", err)
    if cfg.required then return usher.reject("ldap_cluster: " .. tostring(err)) end
    return
  end
  vm.data.ldap_branch = dn
end, {order = 70, name = "branch"})

usher.on("start_complete", function(ev)
  local vm = ev.vm
  if not vm then return end
  if ev.ok then
    local dn, err = ensure(vm.owner, vm.cluster)
    if not dn then usher.log.error("ldap_cluster: ensure branch", "err", err) end
  elseif #usher.vms{owner = vm.owner, cluster = vm.cluster} == 0 then
    local ok, err = remove(vm.owner, vm.cluster)
    if not ok then usher.log.error("ldap_cluster: removing branch", "err", err) end
  end
end, {name = "start_complete"})

usher.on("op_complete", function(ev)
  local vm = ev.vm
  if not (vm and ev.ok and ev.detail.op == "destroy") then return end
  if #usher.vms{owner = vm.owner, cluster = vm.cluster} > 0 then return end
  local ok, err = remove(vm.owner, vm.cluster)
  if not ok then usher.log.error("ldap_cluster: removing branch", "cluster", vm.cluster, "owner", vm.owner, "err", err) end
end, {name = "destroy"})
