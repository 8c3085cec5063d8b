//go:build site

package sitetest

// IPAM crash test: a real `usher controller` process (with ipam_sql on an
// SQLite file) is killed with SIGKILL between the reservation of addresses
// (start_request) and start_complete; a second controller takes over the
// same state and database; no address is ever assigned twice.
//
// The controller's configuration gives ipam_sql its database through
// [policy.modules.sql], as a site would (lua/modules, site/controller.go).

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/internal/waitfor"
)

// buildUsher builds cmd/usher.
func buildUsher(t *testing.T, dir string) string {
	t.Helper()
	repo, _ := filepath.Abs(repoRoot)
	bin := filepath.Join(dir, "usher")
	args := []string{"build", "-o", bin}
	cmd := exec.Command("go", append(args, "./cmd/usher")...)
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestSiteIPAMControllerCrash(t *testing.T) {
	dir := t.TempDir()
	bin := buildUsher(t, dir)
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("usher %v: %v\n%s", args, err, out)
		}
	}
	pki := filepath.Join(dir, "pki")
	run("ca", "init", "--dir", pki)
	run("ca", "issue", "--dir", pki, "--role", "controller", "--name", "ctl", "--host", "127.0.0.1")
	run("ca", "issue", "--dir", pki, "--role", "lnm", "--name", "n1")
	hash, _ := bcrypt.GenerateFromPassword([]byte("alicepw"), bcrypt.MinCost)
	ht := filepath.Join(dir, "htpasswd")
	os.WriteFile(ht, []byte("alice:"+string(hash)+"\n"), 0o600)
	scripts, _ := filepath.Abs(scriptsDir)
	dbPath := filepath.Join(dir, "site.db")
	ctlPort, recPort := freePort(t), freePort(t)
	ctlAddr := fmt.Sprintf("127.0.0.1:%d", ctlPort)
	ctlConf := filepath.Join(dir, "controller.toml")
	os.WriteFile(ctlConf, []byte(fmt.Sprintf(`[controller]
listen = %q
cert_file = %q
key_file = %q
ca_file = %q
domain = "usher.test"
state_dir = %q
grace = "3s"
[policy]
shipped_dir = %q
enable = ["auth_htpasswd", "authz_owner", "place_leastloaded", "ipam_sql"]
watch = false
[policy.config.auth_htpasswd]
file = %q
[policy.config.ipam_sql]
stale = 8
reconcile = "500ms"
ranges = [{name = "lab", subnet = "10.9.0.0/24", first = "10.9.0.10", last = "10.9.0.30"}]
[policy.modules.sql]
path = %q
`, ctlAddr, filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"),
		filepath.Join(dir, "state"), scripts, ht, dbPath)), 0o600)
	lnmConf := filepath.Join(dir, "lnm.toml")
	os.WriteFile(lnmConf, []byte(fmt.Sprintf(`[lnm]
name = "n1"
controller = %q
cert_file = %q
key_file = %q
ca_file = %q
recovery_listen = "127.0.0.1:%d"
driver = "sim"
sim_state_file = %q
sim_boot_delay = "3s"
scan_interval = "1s"
`, ctlAddr, filepath.Join(pki, "n1.crt"), filepath.Join(pki, "n1.key"), filepath.Join(pki, "ca.crt"), recPort,
		filepath.Join(dir, "sim.json"))), 0o600)
	start := func(name, conf string, args ...string) (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "USHER_CONFIG="+conf, "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
		return startProc(t, name, cmd, filepath.Join(dir, name+".log"))
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range []string{"controller1", "controller2", "lnm"} {
			b, _ := os.ReadFile(filepath.Join(dir, n+".log"))
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("--- %s.log (tail)\n%s", n, b)
		}
	})
	ctl1, ctl1done := start("controller1", ctlConf, "controller")
	waitPort(t, ctlAddr, "controller", filepath.Join(dir, "controller1.log"))
	start("lnm", lnmConf, "lnm")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl, err := client.Connect(ctx, client.Config{Addr: ctlAddr, CAFile: filepath.Join(pki, "ca.crt"), User: "alice", Password: "alicepw",
		CallTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	waitfor.True(t, 10*time.Second, "LNM connected", func() bool {
		ns, err := cl.ListLNMs(ctx, nil, false)
		return err == nil && len(ns) == 1 && ns[0].State == api.LNMConnected
	})

	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	count := func(q string) int {
		var n int
		if err := db.QueryRow(q).Scan(&n); err != nil {
			return -1
		}
		return n
	}

	// 1. start two VMs; kill -9 the controller while the LNM boots them
	go cl.Start(ctx, api.StartArgs{ID: "before-crash", Cluster: "c1", Count: 2})
	waitfor.True(t, 10*time.Second, "two reservations", func() bool { return count("select count(*) from ipam_addr where state = 'reserved'") == 2 })
	if n := count("select count(*) from ipam_addr where state = 'used'"); n != 0 {
		t.Fatalf("start_complete already seen (%d used): no crash window", n)
	}
	t0 := time.Now()
	ctl1.Process.Signal(syscall.SIGKILL)
	<-ctl1done
	t.Logf("controller killed with SIGKILL %v after the reservations", time.Since(t0))

	// 2. a new controller on the same state and database
	start("controller2", ctlConf, "controller")
	waitPort(t, ctlAddr, "controller", filepath.Join(dir, "controller2.log"))
	waitfor.True(t, 10*time.Second, "LNM back", func() bool {
		ns, err := cl.ListLNMs(ctx, nil, false)
		return err == nil && len(ns) == 1 && ns[0].State == api.LNMConnected
	})
	crashed := map[string]bool{}
	rs, err := db.Query("select ip from ipam_addr")
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var ip string
		rs.Scan(&ip)
		crashed[ip] = true
	}
	rs.Close()
	// The sim LNM drops a start whose controller session died, so those
	// two VMs never exist. Until `stale` passes their addresses stay
	// reserved: VMs of other names get other addresses. (The controller may
	// reuse the names c11/c12 for a new request; such a VM takes over the
	// reservation of its name — the old one never existed.)
	res, err := cl.Start(ctx, api.StartArgs{ID: "after-crash-1", Cluster: "c1", Names: []string{"d1", "d2"}})
	if err != nil || res.OK() != 2 {
		t.Fatalf("after the crash: %+v %v", res, err)
	}
	seen := map[string]string{}
	for _, d := range res.Done {
		ip := d.VM.Data["ip"]
		if ip == "" || crashed[ip] {
			t.Fatalf("%s got %q, still reserved for the crashed request", d.Name, ip)
		}
		seen[ip] = d.Name
	}
	// then the reconcile frees the reservations of VMs that never came to be
	t1 := time.Now()
	waitfor.True(t, 30*time.Second, "stale reservations freed", func() bool {
		return count("select count(*) from ipam_addr where state = 'reserved'") == 0 &&
			count("select count(*) from ipam_addr where state = 'used'") == 2
	})
	t.Logf("stale reservations reconciled %v after the restart", time.Since(t1))
	res, err = cl.Start(ctx, api.StartArgs{ID: "after-crash-2", Cluster: "c1", Names: []string{"e1", "e2", "e3"}})
	if err != nil || res.OK() != 3 {
		t.Fatalf("after the reconcile: %+v %v", res, err)
	}
	for _, d := range res.Done {
		ip := d.VM.Data["ip"]
		if ip == "" {
			t.Fatalf("%s has no address in its result: %+v", d.Name, d.VM.Data)
		}
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s both got %s", other, d.Name, ip)
		}
		seen[ip] = d.Name
	}
	waitfor.True(t, 10*time.Second, "all five addresses used", func() bool { return count("select count(*) from ipam_addr where state = 'used'") == 5 })
	rows, err := db.Query("select ip, vm, state from ipam_addr order by ip")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	byVM := map[string]string{}
	for rows.Next() {
		var ip, vm, st string
		rows.Scan(&ip, &vm, &st)
		if other, ok := byVM[vm]; ok {
			t.Fatalf("%s holds two addresses %s and %s", vm, other, ip)
		}
		byVM[vm] = ip
		t.Logf("ipam_addr: %s %s %s", ip, vm, st)
	}
	if len(byVM) != 5 {
		t.Fatalf("want 5 addresses, table has %d", len(byVM))
	}
	// every VM the controller knows carries the address the table gave it,
	// and no two VMs share one
	lr, err := cl.List(ctx, api.ListArgs{})
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.VMs) != 5 {
		t.Fatalf("want the 5 VMs started after the crash, listed %d", len(lr.VMs))
	}
	owners := map[string]string{}
	for _, v := range lr.VMs {
		ip := v.Data["ip"]
		if prev, dup := owners[ip]; dup && ip != "" {
			t.Fatalf("address %s assigned twice: %s and %s", ip, prev, v.Name)
		}
		owners[ip] = v.Name
		if ip != "" && byVM[v.Name] != ip {
			t.Fatalf("%s carries %s but the table says %q", v.Name, ip, byVM[v.Name])
		}
	}
	t.Logf("%d VMs listed, addresses %v", len(lr.VMs), owners)
}
