-- auth_ldap.lua: authenticate Usher users against LDAP by binding as them.
--
-- The user's entry is found with a search whose filter value is always
-- escaped (ldap.filter / values = {...}), then a fresh connection binds
-- with that entry's DN and the password. An empty password never counts,
-- an ambiguous or missing entry is a refusal, and an unreachable server is
-- a refusal too (fail closed, logged): the chain passes on to the next
-- authenticate handler (e.g. auth_htpasswd), which decides on its own.
--
-- Needs the ldap module (policy.modules.ldap). Config (usher.config):
--   url          = "ldaps://ldap.example.org"   (must be in policy.modules.ldap.servers)
--   base         = "ou=people,dc=example,dc=org"
--   bind         = "admin"      named service account for the search (default: anonymous)
--   filter       = "(&(objectClass=posixAccount)(uid=%s))"
--   group_base   = "ou=groups,dc=example,dc=org"   (optional: groups from posixGroup memberUid)
--   admin_group  = "usher-admins"   members are Usher administrators
--   admins       = {"alice"}
--   order        = 5   before auth_htpasswd (10); 15 = after it. Either order works:
--                  the first handler that accepts wins.

local cfg = usher.config
local url = cfg.url
local base = cfg.base
local filter = cfg.filter or "(&(objectClass=posixAccount)(uid=%s))"
local admin_group = cfg.admin_group or "usher-admins"
local admins = {}
for _, a in ipairs(cfg.admins or {}) do admins[a] = true end

usher.on("authenticate", function(cred)
  if type(cred.password) ~= "string" or cred.password == "" then return false end
  if type(cred.user) ~= "string" or cred.user == "" then return false end
  if not url or not base then
    usher.log.error("auth_ldap: url and base must be configured")
    return false
  end
  local c = ldap.conn{url = url, bind = cfg.bind}
  local entries, err = c:search{base = base, filter = filter, values = {cred.user},
    attrs = {"uid"}, limit = 2}
  if not entries then
    usher.log.error("auth_ldap: LDAP search failed; login refused", "user", cred.user, "err", err)
    return false
  end
  if #entries ~= 1 then return false end   -- unknown or ambiguous: never guess
  local ok, berr, code = ldap.bind(url, entries[1].dn, cred.password)
  if not ok then
    if code ~= 49 then   -- 49 = invalid credentials; anything else is worth a log line
      usher.log.warn("auth_ldap: bind failed", "user", cred.user, "err", berr)
    end
    return false
  end
  local groups = {}
  if cfg.group_base then
    local gs = c:search{base = cfg.group_base, filter = "(&(objectClass=posixGroup)(memberUid=%s))",
      values = {cred.user}, attrs = {"cn"}}
    for _, g in ipairs(gs or {}) do
      for _, cn in ipairs(g.attrs.cn or {}) do groups[#groups + 1] = cn end
    end
    table.sort(groups)
  end
  local admin = admins[cred.user] == true
  for _, g in ipairs(groups) do
    if g == admin_group then admin = true end
  end
  return true, {groups = groups, admin = admin}
end, {order = tonumber(cfg.order) or 5, name = "ldap"})
