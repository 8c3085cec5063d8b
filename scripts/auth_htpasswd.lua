-- auth_htpasswd.lua: authenticate users against an htpasswd-style file.
--
-- File lines:   user:$2a$10$<bcrypt hash>            (comments start with #)
--          or   user:$2a$10$<bcrypt hash>:group1,group2
-- Config (usher.config):
--   file        = path of the file, absolute or relative to this script's
--                 directory (default "htpasswd")
--   admins      = {"alice", ...}   users that are administrators
--   admin_group = "admin"          members of this group are administrators
-- An empty password is never accepted. A user not in the file, or a wrong
-- password, passes to the next authenticate handler (returns false). An
-- unknown user costs the same bcrypt work as a wrong password (checked
-- against a stand-in hash of the file's cost), so the answer's timing
-- does not tell which names exist.

local cfg = usher.config
local file = cfg.file or "htpasswd"
local admin_group = cfg.admin_group or "admin"
local admins = {}
for _, a in ipairs(cfg.admins or {}) do admins[a] = true end

usher.on("authenticate", function(cred)
  if type(cred.password) ~= "string" or cred.password == "" then
    return false
  end
  local users, groups = usher.read_htpasswd(file)
  if not users then
    usher.log.warn("htpasswd file unreadable", "file", file, "err", groups)
    return false
  end
  local hash = users[cred.user]
  local like
  if not hash then
    for _, h in pairs(users) do like = h break end
  end
  if not usher.bcrypt_check(hash, cred.password, like) then
    return false
  end
  local gs = groups[cred.user] or {}
  local admin = admins[cred.user] == true
  for _, g in ipairs(gs) do
    if g == admin_group then admin = true end
  end
  return true, {groups = gs, admin = admin}
end, {order = 10, name = "htpasswd"})
