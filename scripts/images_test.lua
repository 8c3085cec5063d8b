-- Fixture tests for images.lua.
local t = usher_test
t.images{
  ["debian-small"] = {format = "qcow2", min_mem_mb = 256, description = "Debian"},
  gpu = {format = "raw"},
}
t.config{images = {restrict = {gpu = {groups = {"ml"}}}}}

t.case("image=NAME: every VM boots from it, memory raised to the image's minimum", function()
  local r, err = t.request("start_request", {user = "alice", cluster = "web", args = {image = "debian-small"},
    vms = {{short = "web1", mem_mb = 128}, {short = "web2", mem_mb = 1024}}})
  t.eq(err, nil)
  t.eq(r.vms[1].data.image, "debian-small")
  t.eq(r.vms[2].data.image, "debian-small")
  t.eq(r.vms[1].mem_mb, 256)
  t.eq(r.vms[2].mem_mb, 1024)
end)

t.case("an image the store lacks is refused, naming those the user may use", function()
  local _, err = t.request("start_request", {user = "alice", cluster = "web", args = {image = "windows"}, vms = {{short = "web1"}}})
  t.ok(err and err:find('no image "windows" %(images: debian%-small%)'), err)
end)

t.case("a reserved image: refused to others, granted to its group", function()
  local _, err = t.request("start_request", {user = "alice", cluster = "g", args = {image = "gpu"}, vms = {{short = "g1"}}})
  t.ok(err and err:find("reserved"), err)
  local r, err2 = t.request("start_request", {user = {user = "bob", groups = {"ml"}}, cluster = "g", args = {image = "gpu"}, vms = {{short = "g1"}}})
  t.eq(err2, nil)
  t.eq(r.vms[1].data.image, "gpu")
end)

t.case("no image asked and no default: nothing changes", function()
  local r = t.request("start_request", {user = "alice", cluster = "web", vms = {{short = "web1", mem_mb = 128}}})
  t.eq(r.vms[1].data.image, nil)
  t.eq(r.vms[1].mem_mb, 128)
end)

t.case("a default image", function()
  t.config{images = {default = "debian-small"}}
  local r = t.request("start_request", {user = "alice", cluster = "web", vms = {{short = "web1"}}})
  t.eq(r.vms[1].data.image, "debian-small")
end)
