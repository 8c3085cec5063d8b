-- dns.lua: DNS names for VMs through RFC 2136 updates signed with TSIG.
--
-- register_vm: adds <vm>.<owner>.<domain> (the VM's full name) as an A (or
-- AAAA) record and the matching PTR, from vm.data.ip (set by ipam_sql in
-- start_request). With the request argument dns_alias=yes it also adds the
-- VM's address to <cluster>.<owner>.<domain>: a round-robin alias for the
-- cluster. When the VM is destroyed (or its start failed) the records go.
-- A refused update (wrong TSIG key, not authoritative…) is logged and, with
-- required = true (default), keeps the VM from starting: the client sees
-- "register_vm: … dns: … NOTAUTH".
--
-- Needs the dns module. Config:
--   server = "ns1.example.org:53"  (in policy.modules.dns.servers)
--   key = "usher-key."             (a key of policy.modules.dns.keys)
--   zone = "usher.example.org"     forward zone (default: the Usher domain)
--   reverse_zone = "10.in-addr.arpa"   (omit: no PTR records)
--   ttl = 300, required = true

local cfg = usher.config
local ttl = tonumber(cfg.ttl) or 300
local required = cfg.required ~= false

local function zone() return cfg.zone or usher.domain() end

local function rtype(ip) if ip:find(":", 1, true) then return "AAAA" end return "A" end

local function alias_name(vm)
  return vm.cluster .. "." .. vm.owner .. "." .. usher.domain()
end

local function update(add, remove, zone_name)
  return dns.update{server = cfg.server, key = cfg.key, zone = zone_name, add = add, remove = remove}
end

usher.on("register_vm", function(req, vm)
  local ip = vm.data.ip
  if not ip or ip == "" then
    usher.log.warn("dns: VM has no address (is ipam_sql enabled?)", "vm", vm.name)
    return
  end
  local t = rtype(ip)
  local adds = {{name = vm.name, type = t, data = ip, ttl = ttl}}
  if req.args.dns_alias == "yes" then
    adds[#adds + 1] = {name = alias_name(vm), type = t, data = ip, ttl = ttl}
    vm.data.dns_alias = alias_name(vm)
  end
  local ok, err = update(adds, {{name = vm.name, type = t}}, zone())
  if ok and cfg.reverse_zone then
    local ptr = dns.ptr_name(ip)
    ok, err = update({{name = ptr, type = "PTR", data = vm.name, ttl = ttl}}, {{name = ptr, type = "PTR"}}, cfg.reverse_zone)
  end
  if not ok then
    usher.log.error("dns: update failed", "vm", vm.name, "err", err)
    if required then return usher.reject("dns: " .. tostring(err)) end
    return
  end
  vm.data.dns = vm.name
end, {order = 65, name = "add"})

local function drop_records(vm)
  local ip = vm.data.ip
  if not ip or ip == "" or not vm.data.dns then return end
  local t = rtype(ip)
  local rem = {{name = vm.name, type = t}}
  if vm.data.dns_alias then
    rem[#rem + 1] = {name = vm.data.dns_alias, type = t, data = ip}
  end
  local ok, err = update(nil, rem, zone())
  if ok and cfg.reverse_zone then
    ok, err = update(nil, {{name = dns.ptr_name(ip), type = "PTR"}}, cfg.reverse_zone)
  end
  if not ok then usher.log.error("dns: removing records failed", "vm", vm.name, "err", err) end
end

usher.on("op_complete", function(ev)
  if ev.vm and ev.ok and ev.detail.op == "destroy" then drop_records(ev.vm) end
end, {name = "destroy"})

usher.on("start_complete", function(ev)
  if ev.vm and not ev.ok and ev.vm.state == "failed" then drop_records(ev.vm) end
end, {name = "start_failed"})
