-- audit_sql.lua: every request, decision and event in SQL, and the global
-- state mirrored in tables an administrator can query (the UCSD database
-- plugin's logging half).
--
-- Tables (created on first use):
--   audit_requests(id, time, event, stage, req, kind, usr, op, cluster, vms, lnms, args)
--       stage "in" is logged first in each request chain (order 1), stage
--       "out" last (order 99): a request with "in" but no "out" for an event
--       was rejected by a handler in between; VMs missing from "out" were
--       dropped.
--   audit_events(id, time, type, vm, owner, lnm, req, ok, error, detail)
--   vms(name, short, owner, cluster, lnm, state, mem_mb, vcpus, ip, data, updated)
--       a row per VM: added at register_vm (state "registering"), updated
--       on every state_changed, deleted when the VM is destroyed or failed.
--   lnms(name, state, updated)
--
--   sqlite3 /var/lib/usher/site.db "select name, state, ip from vms order by name"
--
-- Needs the sql module. Config: none.

local created = false
local function schema()
  if created then return end
  for _, q in ipairs({
    [[create table if not exists audit_requests (id integer primary key autoincrement, time real not null,
      event text not null, stage text not null, req text, kind text, usr text, op text, cluster text,
      vms text, lnms text, args text)]],
    [[create table if not exists audit_events (id integer primary key autoincrement, time real not null,
      type text not null, vm text, owner text, lnm text, req text, ok integer, error text, detail text)]],
    [[create table if not exists vms (name text primary key, short text, owner text, cluster text, lnm text,
      state text, mem_mb integer, vcpus integer, ip text, data text, updated real)]],
    [[create table if not exists lnms (name text primary key, state text, updated real)]],
  }) do assert(sql.exec(q)) end
  created = true
end

local function kv(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(t[k]) end
  return table.concat(parts, ",")
end

local function names(list)
  local out = {}
  for _, v in ipairs(list or {}) do out[#out + 1] = type(v) == "table" and v.name or tostring(v) end
  return table.concat(out, ",")
end

local function log_request(event, stage)
  return function(req)
    schema()
    local ok, err = sql.exec([[insert into audit_requests (time, event, stage, req, kind, usr, op, cluster, vms, lnms, args)
      values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]],
      {usher.time(), event, stage, req.id, req.kind, req.user.user, req.op, req.cluster,
       names(req.vms), names(req.lnms), kv(req.args)})
    if not ok then usher.log.error("audit_sql: insert failed", "err", err) end
  end
end

for _, ev in ipairs({"authorize", "start_request", "migrate_request", "op_request"}) do
  usher.on(ev, log_request(ev, "in"), {order = 1, name = ev .. "_in"})
  usher.on(ev, log_request(ev, "out"), {order = 99, name = ev .. "_out"})
end

local function mirror(vm, state)
  sql.exec([[insert into vms (name, short, owner, cluster, lnm, state, mem_mb, vcpus, ip, data, updated)
    values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    on conflict (name) do update set lnm = excluded.lnm, state = excluded.state, mem_mb = excluded.mem_mb,
      vcpus = excluded.vcpus, ip = excluded.ip, data = excluded.data, updated = excluded.updated]],
    {vm.name, vm.short, vm.owner, vm.cluster, vm.lnm, state, vm.mem_mb, vm.vcpus, vm.data.ip, kv(vm.data), usher.time()})
end

usher.on("register_vm", function(req, vm)
  schema()
  mirror(vm, "registering")
end, {order = 99, name = "register_vm"})

local function log_event(ev)
  schema()
  local vm = ev.vm or {}
  local ok, err = sql.exec([[insert into audit_events (time, type, vm, owner, lnm, req, ok, error, detail)
    values (?, ?, ?, ?, ?, ?, ?, ?, ?)]],
    {ev.time, ev.type, vm.name, vm.owner, ev.lnm, ev.req, ev.ok and 1 or 0, ev.error, kv(ev.detail)})
  if not ok then usher.log.error("audit_sql: insert failed", "err", err) end
  if ev.type == "state_changed" and ev.vm then
    if ev.vm.state == "destroyed" then
      sql.exec("delete from vms where name = ?", {ev.vm.name})
    else
      mirror(ev.vm, ev.vm.state)
    end
  elseif ev.type == "start_complete" and ev.vm and not ev.ok then
    if ev.vm.state == "failed" then
      sql.exec("delete from vms where name = ?", {ev.vm.name})
    else
      mirror(ev.vm, ev.vm.state)
    end
  elseif ev.type == "op_complete" and ev.vm and ev.ok and ev.detail.op == "destroy" then
    sql.exec("delete from vms where name = ?", {ev.vm.name})
  elseif (ev.type == "vm_lost" or ev.type == "vm_missing") and ev.vm then
    mirror(ev.vm, ev.vm.state)
  elseif ev.type == "lnm_connected" or ev.type == "lnm_disconnected" then
    sql.exec([[insert into lnms (name, state, updated) values (?, ?, ?)
      on conflict (name) do update set state = excluded.state, updated = excluded.updated]],
      {ev.lnm, ev.type == "lnm_connected" and "connected" or "disconnected", ev.time})
  end
end

for _, ev in ipairs({"start_complete", "op_complete", "migrate_complete", "state_changed", "vm_lost",
                     "vm_missing", "vm_unmanaged", "lnm_connected", "lnm_disconnected", "error"}) do
  usher.on(ev, log_event, {name = ev})
end
