package lua

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestReadOnlyNamedFiles: usher.read_htpasswd reads the files the site's
// configuration names (policy.files, or the script's own config section)
// and nothing else: not /etc/shadow, not /proc/self/environ, not a
// symbolic link to them, not another script's file.
func TestReadOnlyNamedFiles(t *testing.T) {
	dir := t.TempDir()
	own := filepath.Join(dir, "users.htpasswd")
	listed := filepath.Join(dir, "listed.htpasswd")
	other := filepath.Join(dir, "other.htpasswd")
	for _, f := range []string{own, listed, other} {
		os.WriteFile(f, []byte("alice:x\n"), 0o600)
	}
	link := filepath.Join(dir, "sneaky")
	os.Symlink("/proc/self/environ", link)
	try := []string{own, listed, "users.htpasswd", other, "/etc/shadow", "/proc/self/environ", link}
	writeScript(t, dir, "r.lua", `local try = {"`+strings.Join(try, `", "`)+`"}
usher.on("start_request", function(req)
  for _, p in ipairs(try) do
    local users, err = usher.read_htpasswd(p)
    for _, vm in ipairs(req.vms) do
      vm.data[p] = users and "read" or ("refused: " .. tostring(err))
    end
  end
end)`)
	h := newHost(t, Options{Dirs: []string{dir}, Files: []string{listed},
		Config: map[string]map[string]any{"r": {"file": own}}})
	d := mustRun(t, h, "start_request", startReq("c1"))
	got := d.VMs[0].Data
	for _, p := range []string{own, listed, "users.htpasswd"} {
		if got[p] != "read" {
			t.Errorf("%s: %s", p, got[p])
		}
	}
	for _, p := range []string{other, "/etc/shadow", "/proc/self/environ", link} {
		if !strings.HasPrefix(got[p], "refused: ") || !strings.Contains(got[p], "configuration") {
			t.Errorf("%s: %s", p, got[p])
		}
	}
}

// TestBcryptUnknownUserDoesTheWork: bcrypt_check of no hash is false and
// takes as long as a wrong password against a hash of the given cost;
// a password past bcrypt's 72 bytes never matches.
func TestBcryptUnknownUserDoesTheWork(t *testing.T) {
	dir := t.TempDir()
	h12, _ := bcrypt.GenerateFromPassword([]byte("right"), 12)
	long := strings.Repeat("p", 72)
	h72, _ := bcrypt.GenerateFromPassword([]byte(long), bcrypt.MinCost)
	writeScript(t, dir, "b.lua", `usher.on("start_request", function(req)
  local c = usher.config
  local t0 = usher.time()
  local wrong = usher.bcrypt_check(c.h12, "wrong")
  local t1 = usher.time()
  local unknown = usher.bcrypt_check(nil, "wrong", c.h12)
  local t2 = usher.time()
  local over = usher.bcrypt_check(c.h72, c.long .. "x")
  for _, vm in ipairs(req.vms) do
    vm.data.wrong, vm.data.unknown, vm.data.over = tostring(wrong), tostring(unknown), tostring(over)
    vm.data.ratio = tostring((t2 - t1) / (t1 - t0))
  end
end)`)
	h := newHost(t, Options{Dirs: []string{dir}, Budget: time.Minute,
		Config: map[string]map[string]any{"b": {"h12": string(h12), "h72": string(h72), "long": long}}})
	d := mustRun(t, h, "start_request", startReq("c1"))
	got := d.VMs[0].Data
	if got["wrong"] != "false" || got["unknown"] != "false" || got["over"] != "false" {
		t.Fatalf("results %v", got)
	}
	var ratio float64
	if _, err := fmtSscan(got["ratio"], &ratio); err != nil || ratio < 0.3 {
		t.Fatalf("an unknown user took %s times a wrong password's bcrypt work", got["ratio"])
	}
}

func fmtSscan(s string, v *float64) (int, error) { return fmt.Sscan(s, v) }
