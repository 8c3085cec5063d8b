package policytool

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeScript(t testing.TB, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeLib(t testing.TB, dir, name, src string) string {
	t.Helper()
	lib := filepath.Join(dir, "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	return writeScript(t, lib, name+".lua", src)
}

const placeWithRev = `local rev = require("rev")
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.lnm = rev.lnm end
end, {name = "place"})
`

func TestRunTestsReportsFailures(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "p.lua", `usher.on("start_request", function(req) req.vms[1].lnm = "n1" end)`)
	writeScript(t, dir, "p_test.lua", `local t = usher_test
t.fixture{lnms = {{name = "n1"}}}
t.case("good", function()
  local r = t.request("start_request", {user = "a", vms = {{short = "x"}}})
  t.eq(r.vms[1].lnm, "n1")
end)
t.case("bad", function()
  local r = t.request("start_request", {user = "a", vms = {{short = "x"}}})
  t.eq(r.vms[1].lnm, "n2", "placement")
end)`)
	var out bytes.Buffer
	p, f, err := RunTests(dir, &out)
	if err != nil || p != 1 || f != 1 {
		t.Fatalf("p=%d f=%d err=%v\n%s", p, f, err, out.String())
	}
	if !strings.Contains(out.String(), `FAIL p_test.lua: bad: p_test.lua:9: placement: expected "n2", got "n1"`) {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestCheckReportsFileLine(t *testing.T) {
	dir := t.TempDir()
	good := writeScript(t, dir, "good.lua", `usher.on("authorize", function() end)`)
	syntax := writeScript(t, dir, "syntax.lua", "usher.on(\"authorize\", function()\n  if then\nend)")
	event := writeScript(t, dir, "event.lua", "\n\nusher.on(\"authorise\", function() end)")
	interval := writeScript(t, dir, "interval.lua", "usher.every(\"soon\", function() end)")
	runtime := writeScript(t, dir, "runtime.lua", "local x = nil\nx.y = 1")
	nothing := writeScript(t, dir, "nothing.lua", "local x = 1")
	errs := Check([]string{good, syntax, event, interval, runtime, nothing, filepath.Join(dir, "missing.lua")})
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"syntax.lua:2:", "event.lua:3:", "authorise", "interval.lua:1:", "runtime.lua:2:", "nothing.lua: registers no handler", "missing.lua"} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in:\n%s", want, all)
		}
	}
	if len(errs) != 6 {
		t.Errorf("want 6 errors, got %d:\n%s", len(errs), all)
	}
}

func TestRunTestsResolvesLibraries(t *testing.T) {
	dir := t.TempDir()
	writeLib(t, dir, "rev", `return {lnm = "n1"}`)
	writeScript(t, dir, "place.lua", placeWithRev)
	writeScript(t, dir, "place_test.lua", `local t = usher_test
t.fixture{lnms = {{name = "n1"}}}
t.case("placed", function()
  local r = t.request("start_request", {user = "a", vms = {{short = "x"}}})
  t.eq(r.vms[1].lnm, require("rev").lnm)
end)`)
	var out bytes.Buffer
	p, f, err := RunTests(dir, &out)
	if err != nil || p != 1 || f != 0 {
		t.Fatalf("p=%d f=%d err=%v\n%s", p, f, err, out.String())
	}
}
