package lua

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/usher-vm/usher/api"
)

func writeLib(t testing.TB, dir, name, src string) string {
	t.Helper()
	lib := filepath.Join(dir, "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	return writeScript(t, lib, name+".lua", src)
}

// placeWith places every VM on the node lib rev names.
const placeWithRev = `local rev = require("rev")
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.lnm = rev.lnm end
end, {name = "place"})
`

func placedOn(t *testing.T, h *Host) string {
	t.Helper()
	return mustRun(t, h, api.EvStartRequest, startReq("c1")).VMs[0].LNM
}

func TestRequireCachedPerState(t *testing.T) {
	dir := t.TempDir()
	// The library's top level counts its runs in a global of the state.
	writeLib(t, dir, "counter", `runs = (runs or 0) + 1
local M = {}
function M.node() return "n" .. runs end
return M`)
	writeLib(t, dir, "nothing", `local x = 1`)
	writeScript(t, dir, "a.lua", `local c1 = require("counter")
local c2 = require("counter")
assert(c1 == c2, "require not cached")
assert(require("nothing") == true, "library without a return value")
usher.on("start_request", function(req)
  assert(require("counter") == c1, "require not cached at call time")
  for _, vm in ipairs(req.vms) do vm.lnm = c1.node() end
end, {name = "place"})`)
	writeScript(t, dir, "b.lua", `local c = require("counter")
usher.on("authorize", function() assert(c.node() == "n1") end)`)
	h := newHost(t, Options{Dirs: []string{dir}, PoolSize: 1})
	for i := 0; i < 3; i++ {
		if got := placedOn(t, h); got != "n1" {
			t.Fatalf("library top level ran %s times in one state", got)
		}
	}
	mustRun(t, h, api.EvAuthorize, startReq("c1"))
	h.libMu.Lock()
	n := len(h.libProtos)
	h.libMu.Unlock()
	if n != 2 { // counter and nothing, each compiled once for both scripts
		t.Fatalf("%d compiled libraries, want 2", n)
	}
}

func TestRequireRefusesPaths(t *testing.T) {
	dir := t.TempDir()
	writeLib(t, dir, "ok", `return 1`)
	writeScript(t, dir, "probe.lua", `
for _, n in ipairs({"../ok", "lib/ok", "ok.lua", "a.b", "/etc/passwd", "..", ".", "Ok", "1ok", "", "ok "}) do
  local ok, err = pcall(require, n)
  if ok or not string.find(tostring(err), "invalid library name", 1, true) then
    error("accepted " .. n .. ": " .. tostring(err))
  end
end
assert(require("ok") == 1)
usher.on("authorize", function() end)`)
	newHost(t, Options{Dirs: []string{dir}})
}

func TestRequireErrorsNameFileLine(t *testing.T) {
	dir := t.TempDir()
	writeLib(t, dir, "broken", "local M = {}\nfunction M.f( return 1 end\nreturn M")
	writeScript(t, dir, "missing.lua", "-- needs a library\n\nlocal m = require(\"nope\")\nusher.on(\"authorize\", function() end)")
	writeScript(t, dir, "syntax.lua", "local m = require(\"broken\")\nusher.on(\"authorize\", function() end)")
	h, err := New(Options{Dirs: []string{dir}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = h.Start(context.Background())
	if err == nil {
		t.Fatal("scripts with bad requires loaded")
	}
	msg := err.Error()
	for _, want := range []string{
		"missing.lua:3:", filepath.Join(dir, "lib", "nope.lua"),
		"syntax.lua:1:", filepath.Join(dir, "lib", "broken.lua") + ":2:",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in %s", want, msg)
		}
	}
	// CheckFile on a host without Dirs resolves relative to the checked
	// file's directory.
	checker := newHost(t, Options{PoolSize: 1})
	err = checker.CheckFile(filepath.Join(dir, "missing.lua"))
	if err == nil || !strings.Contains(err.Error(), "missing.lua:3:") {
		t.Fatalf("check: %v", err)
	}
	writeLib(t, dir, "nope", "return {}")
	if err := checker.CheckFile(filepath.Join(dir, "missing.lua")); err != nil {
		t.Fatalf("check: %v", err)
	}
}

func TestRequireSiteOverridesShipped(t *testing.T) {
	shipped, site := t.TempDir(), t.TempDir()
	writeLib(t, shipped, "rev", `return {lnm = "n1"}`)
	writeLib(t, shipped, "other", `return {lnm = "n3"}`)
	writeLib(t, site, "rev", `return {lnm = require("other").lnm == "n3" and "n2" or "bad"}`)
	writeScript(t, shipped, "place.lua", placeWithRev)
	h := newHost(t, Options{Dirs: []string{shipped, site}})
	if got := placedOn(t, h); got != "n2" {
		t.Fatalf("placed on %q, want the site library's n2", got)
	}
}

func TestLibraryEditReloadsDependents(t *testing.T) {
	dir := t.TempDir()
	writeLib(t, dir, "rev", `return {lnm = "n1"}`)
	writeScript(t, dir, "place.lua", placeWithRev)
	h := newHost(t, Options{Dirs: []string{dir}, Watch: true, PoolSize: 2})
	ch := reloads(h)
	if got := placedOn(t, h); got != "n1" {
		t.Fatalf("placed on %q", got)
	}
	lib := filepath.Join(dir, "lib")
	saveByRename(t, lib, "rev.lua", `return {lnm = "n2"}`)
	if r := waitReload(t, ch, "place.lua"); r.err != nil {
		t.Fatal(r.err)
	}
	if got := placedOn(t, h); got != "n2" {
		t.Fatalf("after library edit placed on %q", got)
	}
	// A broken library keeps the old version of the dependent script.
	saveByRename(t, lib, "rev.lua", "return {lnm = \n")
	r := waitReload(t, ch, "place.lua")
	if r.err == nil || !strings.Contains(r.err.Error(), "place.lua:1:") || !strings.Contains(r.err.Error(), filepath.Join(lib, "rev.lua")) {
		t.Fatalf("reload err %v", r.err)
	}
	if got := placedOn(t, h); got != "n2" {
		t.Fatalf("old version not kept: placed on %q", got)
	}
	if st := h.Status()[0]; !st.Loaded || !strings.Contains(st.LastError, "rev.lua") {
		t.Fatalf("status %+v", st)
	}
	// Fixing the library loads a new version and clears the error.
	saveByRename(t, lib, "rev.lua", `return {lnm = "n3"}`)
	if r := waitReload(t, ch, "place.lua"); r.err != nil {
		t.Fatal(r.err)
	}
	if got := placedOn(t, h); got != "n3" {
		t.Fatalf("after fix placed on %q", got)
	}
	if st := h.Status()[0]; st.LastError != "" {
		t.Fatalf("last error kept: %q", st.LastError)
	}
}
