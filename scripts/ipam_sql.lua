-- ipam_sql.lua: IP address management in SQL (the UCSD database plugin).
--
-- Address ranges (per subnet/VLAN) are assigned to users or groups in the
-- config. In start_request (after placement) every VM gets an address,
-- reserved in the table ipam_addr, and the guest configuration the node
-- applies: vm.data.ip / subnet / vlan / gateway / nameservers / search and a MAC
-- made from the address (52:54 and its four bytes: unique wherever the
-- address is, kept for the VM's life). A successful start_complete marks the address used; a
-- failed start or a destroy frees it. ipam_addr.ip is the primary key: an
-- address can never be handed out twice, also across a controller crash,
-- because reservations live in the database (SQLite file or PostgreSQL),
-- not in memory. A timer reconciles reservations older than `stale`
-- against usher.vm(): a VM that runs keeps (and now uses) its address, a
-- reservation whose VM is unknown is freed — but only while every known
-- LNM is connected, so VMs of a node that has not reconnected yet after a
-- controller restart keep their addresses.
-- A VM for which no address is free is dropped from the request.
--
-- Needs the sql module. Config:
--   ranges = {
--     {name = "lab", subnet = "10.10.0.0/24", vlan = 10, first = "10.10.0.10",
--      last = "10.10.0.250", users = {"alice"}, groups = {"sysnet"},
--      gateway = "10.10.0.1", dns = {"10.10.0.2"}, search = {"example.org"}},
--     -- search defaults to <owner>.<Usher domain>, so "ssh web2" works
--     -- between a user's VMs
--     {name = "pool", subnet = "10.20.0.0/16", first = "10.20.0.10", last = "10.20.3.250"}, -- anyone
--   }
--   stale = 120        seconds before a reservation is reconciled
--   reconcile = "30s"  how often

local cfg = usher.config
local ranges = cfg.ranges or {}
local stale = tonumber(cfg.stale) or 120

local function ip2n(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then error("ipam_sql: bad IPv4 address " .. tostring(s)) end
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

local function n2ip(n)
  local d = n % 256; n = (n - d) / 256
  local c = n % 256; n = (n - c) / 256
  local b = n % 256; local a = (n - b) / 256
  return string.format("%d.%d.%d.%d", a, b, c, d)
end

local function schema()
  assert(sql.exec([[create table if not exists ipam_addr (
    ip text primary key, range_name text not null, vm text unique, owner text,
    state text not null, req text, since real not null)]]))
end

-- ranges_for lists the ranges a user may draw from, in config order.
local function ranges_for(user)
  local out = {}
  for _, r in ipairs(ranges) do
    local ok = r.users == nil and r.groups == nil
    for _, u in ipairs(r.users or {}) do if u == user.user then ok = true end end
    for _, g in ipairs(r.groups or {}) do
      for _, ug in ipairs(user.groups or {}) do if g == ug then ok = true end end
    end
    if ok then out[#out + 1] = r end
  end
  return out
end

-- reserve returns an address for vm (its existing one on a retry).
local function reserve(req, vm)
  local have = sql.query("select ip, range_name from ipam_addr where vm = ?", {vm.name})
  if have and have[1] then return have[1].ip, have[1].range_name end
  for _, r in ipairs(ranges_for(req.user)) do
    local used = {}
    for _, row in ipairs(assert(sql.query("select ip from ipam_addr where range_name = ?", {r.name}))) do
      used[row.ip] = true
    end
    for n = ip2n(r.first), ip2n(r.last) do
      local ip = n2ip(n)
      if not used[ip] then
        local ok = sql.exec("insert into ipam_addr (ip, range_name, vm, owner, state, req, since) values (?, ?, ?, ?, 'reserved', ?, ?)",
          {ip, r.name, vm.name, vm.owner, req.id, usher.time()})
        if ok then return ip, r.name end
        -- taken meanwhile (unique constraint): try the next one
      end
    end
  end
  return nil
end

-- mac_of makes a VM's MAC from its address: 52:54 and the four bytes.
local function mac_of(ip)
  local n = ip2n(ip)
  local b = {}
  for i = 4, 1, -1 do b[i] = n % 256; n = (n - b[i]) / 256 end
  return string.format("52:54:%02x:%02x:%02x:%02x", b[1], b[2], b[3], b[4])
end

-- list joins a config list (or takes a string) for VM data.
local function list(v)
  if type(v) == "table" then return table.concat(v, ",") end
  return tostring(v)
end

local function range_by_name(name)
  for _, r in ipairs(ranges) do if r.name == name then return r end end
end

usher.on("start_request", function(req)
  if req.dry_run then return end
  schema()
  local none = {}
  for _, vm in ipairs(req.vms) do
    local ip, rname = reserve(req, vm)
    if ip then
      local r = range_by_name(rname) or {}
      vm.data.ip = ip
      vm.data.mac = mac_of(ip)
      if r.vlan then vm.data.vlan = tostring(r.vlan) end
      if r.subnet then vm.data.subnet = r.subnet end
      if r.gateway then vm.data.gateway = r.gateway end
      if r.dns then vm.data.nameservers = list(r.dns) end
      vm.data.search = list(r.search or vm.owner .. "." .. usher.domain())
    else
      none[#none + 1] = vm.name
    end
  end
  for _, name in ipairs(none) do req:drop(name, "ipam: no free address for " .. req.user.user) end
end, {order = 60, name = "reserve"})

local function free(name)
  schema()
  local ok, err = sql.exec("delete from ipam_addr where vm = ?", {name})
  if not ok then usher.log.error("ipam_sql: freeing address failed", "vm", name, "err", err) end
end

usher.on("start_complete", function(ev)
  if not ev.vm then return end
  schema()
  if ev.ok then
    sql.exec("update ipam_addr set state = 'used', since = ? where vm = ?", {usher.time(), ev.vm.name})
  elseif ev.vm.state == "failed" then
    free(ev.vm.name)
  end -- "lost": the VM may run; keep the address until reconciled
end, {name = "start_complete"})

usher.on("op_complete", function(ev)
  if ev.vm and ev.ok and ev.detail.op == "destroy" then free(ev.vm.name) end
end, {name = "destroy"})

local function all_lnms_connected()
  for _, n in ipairs(usher.lnms()) do
    if not n.connected then return false end
  end
  return true
end

usher.every(cfg.reconcile or "30s", function()
  schema()
  local now = usher.time()
  local rows = assert(sql.query("select ip, vm, state from ipam_addr where state = 'reserved' and since < ?", {now - stale}))
  local connected = all_lnms_connected()
  for _, row in ipairs(rows) do
    local vm = usher.vm(row.vm)
    if vm and vm.state ~= "failed" and vm.state ~= "destroyed" then
      if vm.state ~= "starting" and vm.state ~= "pending" then
        sql.exec("update ipam_addr set state = 'used', since = ? where ip = ?", {now, row.ip})
      end
    elseif connected then
      usher.log.info("ipam_sql: freeing stale reservation", "ip", row.ip, "vm", row.vm)
      sql.exec("delete from ipam_addr where ip = ? and state = 'reserved'", {row.ip})
    end
  end
end, {name = "reconcile"})
