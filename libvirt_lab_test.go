//go:build libvirt

package usher

// The paper's user story on real hypervisors: "After completing their boot
// sequence, user mmcnett can ssh into any of his new VMs by name." Two
// libvirt hosts in a lab network namespace (bridge, named, dnsmasq) made by
// the harness; a controller with the shipped images, ipam_sql, dns (real
// named, TSIG) and nfs_dirs policies; alice drives it through ush.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	_ "modernc.org/sqlite"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/nodemgr"
	lv "github.com/usher-vm/usher/nodemgr/libvirt"
	"github.com/usher-vm/usher/nodemgr/libvirt/libvirttest"
	"github.com/usher-vm/usher/repl"
	"github.com/usher-vm/usher/site"
)

// labSite is a site on the two libvirt hosts of a lab, with the shipped
// site policies and real named.
type labSite struct {
	*site.Site
	h       *libvirttest.Harness
	lab     *libvirttest.Lab
	drivers map[string]*lv.Driver
	db      string // ipam_sql's SQLite file
	nfs     string // nfs_dirs' root
}

const labDomain = "usher.test"

func startLabSite(t testing.TB, overcommit int) *labSite {
	t.Helper()
	h := libvirttest.StartHarness(t)
	lab := h.MustStartLab(t, labDomain)
	built, err := h.BuildImage()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	images := labStore(t, built, dir)
	var lines []string
	for _, u := range [][2]string{{"alice", "alice-pw"}, {"root", "root-pw"}} {
		b, err := bcrypt.GenerateFromPassword([]byte(u[1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u[0]+":"+string(b))
	}
	ht := filepath.Join(dir, "users.htpasswd")
	if err := os.WriteFile(ht, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ls := &labSite{h: h, lab: lab, drivers: map[string]*lv.Driver{}, db: filepath.Join(dir, "site.db"), nfs: filepath.Join(dir, "nfs")}
	os.MkdirAll(ls.nfs, 0o755)
	toml := fmt.Sprintf(`
[controller]
domain = %q
image_dir = %q
[policy]
enable = ["auth_htpasswd", "authz_owner", "images", "qos", "place_leastloaded", "ipam_sql", "dns", "nfs_dirs", "drain"]
[policy.config.drain]
interval = "1s"
[policy.config.auth_htpasswd]
file = %q
admins = ["root"]
[policy.config.ipam_sql]
ranges = [{name = "lab", subnet = "10.77.0.0/24", first = "10.77.0.10", last = "10.77.0.99", gateway = %q, dns = [%q]}]
[policy.config.dns]
server = %q
key = %q
reverse_zone = "0.77.10.in-addr.arpa"
ttl = 5
[policy.config.nfs_dirs]
root = %q
[policy.modules.sql]
path = %q
[policy.modules.fs]
roots = [%q]
[policy.modules.dns]
servers = [%q]
[policy.modules.dns.keys.%q]
algorithm = "hmac-sha256"
secret = %q
`, labDomain, images, ht, lab.Gateway, lab.Gateway, lab.DNSForward, lab.TSIGName, ls.nfs, ls.db, ls.nfs, lab.DNSForward, lab.TSIGName, lab.TSIGSecret)
	cf := filepath.Join(dir, "site.toml")
	if err := os.WriteFile(cf, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := site.Params()
	if err := cfg.LoadFile(cf); err != nil {
		t.Fatal(err)
	}
	disks := filepath.Join(h.RunDir, "disks") // both hosts see it at this path: shared storage
	host := map[string]int{"host1": 1, "host2": 2}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := site.Start(ctx, site.Options{Dir: dir, Config: cfg, Domain: labDomain,
		ReportInterval: 500 * time.Millisecond, ScanInterval: time.Second, KeepAlive: time.Second,
		NewDriver: func(name string) (nodemgr.Driver, string, error) {
			o := h.Options(host[name], name)
			o.Bridge, o.ImageDir, o.DiskDir, o.DiskMigration = lab.Bridge, images, disks, lv.DiskSharedUnsafe
			o.VCPUOvercommit = overcommit
			d, err := lv.New(context.Background(), o)
			if err != nil {
				return nil, "", err
			}
			ls.drivers[name] = d
			return d, "", nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ls.Site = s
	for _, n := range []string{"host1", "host2"} {
		if err := s.AddLNM(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WaitLNMs(ctx, 2); err != nil {
		t.Fatal(err)
	}
	return ls
}

// labStore is the site's image store: the harness's Debian image
// (debian-small) and "tiny", the initramfs guest as an image (its disk
// unused), all symbolic links into the harness's cache.
func labStore(t testing.TB, built, dir string) string {
	t.Helper()
	store := filepath.Join(dir, "images")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"debian-small.qcow2", "debian-small.json", "vmlinuz", "initramfs.gz"} {
		if err := os.Symlink(filepath.Join(built, f), filepath.Join(store, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(store, "tiny.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	meta := `{"format":"raw","description":"busybox + dropbear initramfs guest","kernel":"vmlinuz","initrd":"initramfs.gz","cmdline":"console=ttyS0 quiet"}`
	if err := os.WriteFile(filepath.Join(store, "tiny.json"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	return store
}

// ush runs one shell command as c (the code of ush -c) and returns what
// it printed.
func ush(t testing.TB, c *client.Client, line string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := repl.Exec(ctx, c, line, false, &out); err != nil {
		t.Fatalf("ush> %s: %v\n%s", line, err, out.String())
	}
	t.Logf("ush> %s\n%s", line, out.String())
	return out.String()
}

func TestLibvirtGuestsReachableByName(t *testing.T) {
	ls := startLabSite(t, 1)
	lab := ls.lab
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	key := libvirttest.NewKey(t, t.TempDir(), "alice")

	ush(t, alice, "keys add "+key+".pub")
	if out := ush(t, alice, "images"); !strings.Contains(out, "debian-small") || !strings.Contains(out, "tiny") {
		t.Fatalf("images lists no debian-small:\n%s", out)
	}
	if out := ush(t, alice, "start -n sneetch -c 3 image=debian-small"); !strings.Contains(out, "started 3 of 3 VMs") {
		t.Fatalf("start:\n%s", out)
	}
	vms := map[string]*api.VM{}
	for _, v := range alice.VMs() {
		vms[v.Short] = v
	}
	for i := 1; i <= 3; i++ {
		short := fmt.Sprintf("sneetch%d", i)
		v := vms[short]
		if v == nil || v.Data[api.DataIP] == "" || v.Data[api.DataImage] != "debian-small" || v.MemMB < 256 {
			t.Fatalf("%s: %+v", short, v)
		}
		// its own overlay of the image
		if _, err := os.Stat(ls.drivers[v.LNM].OverlayPath(v.Name)); err != nil {
			t.Errorf("%s: no overlay: %v", short, err)
		}
		// its name through named
		if got, err := lab.Dig(ctx, v.Name); err != nil || len(got) != 1 || got[0] != v.Data[api.DataIP] {
			t.Errorf("dig %s: %v %v, want %s", v.Name, got, err, v.Data[api.DataIP])
		}
	}
	// ssh to each by name returns its hostname (all three boot at once under
	// TCG on a machine that may be slow: a generous bound).
	for i := 1; i <= 3; i++ {
		short := fmt.Sprintf("sneetch%d", i)
		lab.WaitSSHWithin(t, 6*time.Minute, key, short+".alice."+labDomain, short)
	}
	// the console's log has the boot
	if out := ush(t, alice, "console --log sneetch1"); !strings.Contains(out, "USHER-GUEST-UP sneetch1") || !strings.Contains(out, "USHER-SEED hostname=sneetch1 keys=1") {
		t.Errorf("console --log sneetch1 lacks the boot markers")
	}

	// Live migration while an ssh session prints a counter: the session
	// survives, the address stays; the largest gap is reported.
	// Each host has 2 CPUs (the machine's) and the three VMs one vCPU
	// each: move one from the host holding two to the other.
	on := map[string][]*api.VM{}
	for _, v := range vms {
		on[v.LNM] = append(on[v.LNM], v)
	}
	from, to := "host1", "host2"
	if len(on["host2"]) > len(on["host1"]) {
		from, to = to, from
	}
	mig := on[from][0]
	fqdn := mig.Name
	loop := startSSHLoop(t, lab, key, fqdn)
	loop.waitLines(t, 20)
	t0 := time.Now()
	if out := ush(t, alice, "migrate "+mig.Short+" "+to); !strings.Contains(out, "1 of 1") {
		t.Fatalf("migrate:\n%s", out)
	}
	took := time.Since(t0)
	n := loop.count()
	loop.waitLines(t, n+40)
	gap, lines := loop.stop(t)
	t.Logf("live migration of %s %s→%s took %v; the ssh session printed %d lines, largest gap %v", mig.Name, mig.LNM, to, took.Round(10*time.Millisecond), lines, gap.Round(10*time.Millisecond))
	if got, err := lab.SSH(ctx, key, fqdn, "hostname; ip -4 -o addr show"); err != nil || !strings.HasPrefix(got, mig.Short) || !strings.Contains(got, mig.Data[api.DataIP]+"/24") {
		t.Fatalf("after migration: %q %v", got, err)
	}
	if v, _ := alice.VM(mig.Name); v == nil || v.LNM != to {
		t.Fatalf("cache after migration: %+v", v)
	}

	// Destroy: overlays, addresses, DNS records and folders go. The
	// overlays go with the domains; the policies clean up in op_complete,
	// a notification that runs after the result is back: wait for them.
	ush(t, alice, "destroy @sneetch")
	for _, v := range vms {
		for _, d := range ls.drivers {
			if _, err := os.Stat(d.OverlayPath(v.Name)); !os.IsNotExist(err) {
				t.Errorf("%s: overlay left (%v)", v.Name, err)
			}
		}
	}
	db, err := sql.Open("sqlite", "file:"+ls.db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitfor.Error(t, time.Minute, "the policies to release what the VMs held", func() error {
		for _, v := range vms {
			if got, err := lab.Dig(ctx, v.Name); err != nil || len(got) != 0 {
				return fmt.Errorf("%s still resolves: %v %v", v.Name, got, err)
			}
		}
		var held int
		if err := db.QueryRow("select count(*) from ipam_addr").Scan(&held); err != nil || held != 0 {
			return fmt.Errorf("ipam_addr holds %d rows (%v)", held, err)
		}
		if ents, _ := os.ReadDir(filepath.Join(ls.nfs, "vms", "alice")); len(ents) != 0 {
			return fmt.Errorf("nfs_dirs left %v", ents)
		}
		return nil
	})
}

// sshLoop is an ssh session printing a counter every 50 ms, with the
// arrival time of each line.
type sshLoop struct {
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	at     []time.Time
	more   chan struct{}
}

func startSSHLoop(t *testing.T, lab *libvirttest.Lab, key, host string) *sshLoop {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := lab.Cmd(ctx, libvirttest.SSHArgs(key, host, `i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done`)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &sshLoop{cancel: cancel, done: make(chan error, 1), more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.at = append(l.at, time.Now())
			l.mu.Unlock()
			select {
			case l.more <- struct{}{}:
			default:
			}
		}
		l.done <- cmd.Wait()
		close(l.more)
	}()
	t.Cleanup(func() { cancel() })
	return l
}

func (l *sshLoop) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.at)
}

// waitLines waits until the session has printed n lines; it fails the
// test if the session ends first.
func (l *sshLoop) waitLines(t *testing.T, n int) {
	t.Helper()
	waitfor.Error(t, 2*time.Minute, fmt.Sprintf("the ssh session to print %d lines", n), func() error {
		if c := l.count(); c < n {
			select {
			case err := <-l.done:
				t.Fatalf("the ssh session ended after %d lines: %v", c, err)
			default:
			}
			return fmt.Errorf("%d so far", c)
		}
		return nil
	})
}

// stop ends the session and returns the largest gap between two lines.
func (l *sshLoop) stop(t *testing.T) (time.Duration, int) {
	select {
	case err := <-l.done:
		t.Fatalf("the ssh session ended on its own: %v", err)
	default:
	}
	l.cancel()
	for range l.more {
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(l.at); i++ {
		gap = max(gap, l.at[i].Sub(l.at[i-1]))
	}
	return gap, len(l.at)
}

// BenchmarkBootToSSH: ten initramfs guests (image tiny, addresses from
// ipam_sql, names in named, alice's key from the seed) started through
// Usher — ush, controller, the shipped policies, both LNMs — until every
// one answers ssh by name; then ten of the same guests started directly
// on the two hosts' drivers (go-libvirt; addresses, keys and seeds given
// by hand), until every one answers ssh at its address. Both in one run,
// on the same lab; the hosts offer 4 vCPUs per CPU so ten fit.
//
//	go test -tags libvirt -run '^$' -bench BootToSSH -benchtime 1x .
func BenchmarkBootToSSH(b *testing.B) {
	ls := startLabSite(b, 4)
	lab := ls.lab
	ctx := context.Background()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		b.Fatal(err)
	}
	defer alice.Close()
	key := libvirttest.NewKey(b, b.TempDir(), "alice")
	pub, _ := os.ReadFile(key + ".pub")
	ush(b, alice, "keys add "+key+".pub")
	const n = 10
	waitAll := func(hosts []string, want []string) {
		var wg sync.WaitGroup
		for i := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lab.WaitSSHWithin(b, 5*time.Minute, key, hosts[i], want[i])
			}()
		}
		wg.Wait()
	}
	var usherT, directT time.Duration
	for i := 0; i < b.N; i++ {
		cl := fmt.Sprintf("boot%d", i)
		t0 := time.Now()
		ush(b, alice, fmt.Sprintf("start -n %s -c %d image=tiny", cl, n))
		var hosts, want []string
		for j := 1; j <= n; j++ {
			hosts = append(hosts, fmt.Sprintf("%s%d.alice.%s", cl, j, labDomain))
			want = append(want, fmt.Sprintf("%s%d", cl, j))
		}
		waitAll(hosts, want)
		usherT += time.Since(t0)
		ush(b, alice, "destroy @"+cl)

		t0 = time.Now()
		hosts, want = nil, nil
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for j := 0; j < n; j++ {
			name := fmt.Sprintf("direct%d-%d", i, j) // not an Usher name: never adopted
			ip := fmt.Sprintf("10.77.0.%d", 200+j)
			d := ls.drivers[[]string{"host1", "host2"}[j%2]]
			hosts, want = append(hosts, ip), append(want, fmt.Sprintf("direct%d-%d", i, j))
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- d.Start(ctx, nodemgr.Spec{Name: name, MemMB: 128, VCPUs: 1, Data: api.StringMap{
					api.DataImage: "tiny", api.DataIP: ip, api.DataSubnet: "10.77.0.0/24", api.DataGateway: lab.Gateway,
					api.DataSSHKeys: strings.TrimSpace(string(pub))}})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		waitAll(hosts, want)
		directT += time.Since(t0)
		for j := 0; j < n; j++ {
			d := ls.drivers[[]string{"host1", "host2"}[j%2]]
			d.Op(ctx, fmt.Sprintf("direct%d-%d", i, j), api.OpDestroy, nodemgr.OpOptions{})
		}
	}
	b.ReportMetric(usherT.Seconds()/float64(b.N), "usher-s")
	b.ReportMetric(directT.Seconds()/float64(b.N), "direct-s")
	b.ReportMetric(float64(usherT)/float64(directT), "usher/direct")
}

// consoleLog is what VM name's serial console printed (ush console --log).
func consoleLog(t testing.TB, c *client.Client, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := repl.Exec(ctx, c, "console --log "+name, false, &out); err != nil {
		return ""
	}
	return out.String()
}

var tickLine = regexp.MustCompile(`(?m)^tick (\d+)\r?$`)

// ticks are the counter values a test guest printed, in order.
func ticks(log string) []int {
	var out []int
	for _, m := range tickLine.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// TestLibvirtDrainAndRestore: host1 runs two guests printing a counter on
// their consoles; "lnm drain host1" live-migrates both to host2 (drain.lua)
// where their counters carry on (no reboot), host1 enters maintenance;
// "lnm restore host1" and a new VM is placed there again.
func TestLibvirtDrainAndRestore(t *testing.T) {
	ls := startLabSite(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	alice, err := ls.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	root, err := ls.Client(ctx, "root", "root-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if out := ush(t, alice, "start -n tick -c 2 --on host1 image=tiny"); !strings.Contains(out, "started 2 of 2") {
		t.Fatalf("start:\n%s", out)
	}
	names := []string{"tick1.alice." + labDomain, "tick2.alice." + labDomain}
	before := map[string]int{}
	for _, n := range names {
		if v, _ := alice.VM(n); v == nil || v.LNM != "host1" {
			t.Fatalf("%s: %+v", n, v)
		}
		waitfor.True(t, 5*time.Minute, n+" counting on its console", func() bool {
			tk := ticks(consoleLog(t, alice, n))
			return len(tk) > 0 && tk[len(tk)-1] >= 3
		})
	}
	for _, n := range names {
		tk := ticks(consoleLog(t, alice, n))
		before[n] = tk[len(tk)-1]
	}
	ush(t, root, `lnm drain host1 --reason "kernel update"`)
	waitfor.True(t, 5*time.Minute, "host1 in maintenance", func() bool {
		ls, err := root.ListLNMs(ctx, []string{"host1"}, false)
		return err == nil && len(ls) == 1 && ls[0].Mode == api.ModeMaintenance
	})
	if out := ush(t, root, "lnms"); !strings.Contains(out, "maintenance") || !strings.Contains(out, "kernel update") {
		t.Errorf("lnms does not show the maintenance:\n%s", out)
	}
	for _, n := range names {
		v, _ := alice.VM(n)
		if v == nil || v.LNM != "host2" || v.State != api.StateRunning {
			t.Fatalf("%s after the drain: %+v", n, v)
		}
		// Its counter carries on where it was: the guest was not rebooted.
		var log string
		waitfor.True(t, 2*time.Minute, n+" counting on host2", func() bool {
			log = consoleLog(t, alice, n)
			tk := ticks(log)
			return len(tk) > 0 && tk[len(tk)-1] >= before[n]+3
		})
		tk := ticks(log)
		for i := 1; i < len(tk); i++ {
			if tk[i] < tk[i-1] {
				t.Fatalf("%s: its counter went back from %d to %d (rebooted?):\n%s", n, tk[i-1], tk[i], log)
			}
		}
		if c := strings.Count(log, "USHER-GUEST-UP"); c > 1 {
			t.Fatalf("%s booted %d times:\n%s", n, c, log)
		}
		t.Logf("%s: counter at %d before the drain, %d on host2", n, before[n], tk[len(tk)-1])
	}
	ush(t, root, "lnm restore host1")
	if out := ush(t, alice, "start -n again -c 1 --on host1 image=tiny"); !strings.Contains(out, "started 1 of 1") {
		t.Fatalf("start after restore:\n%s", out)
	}
	if v, _ := alice.VM("again1.alice." + labDomain); v == nil || v.LNM != "host1" {
		t.Fatalf("after restore: %+v", v)
	}
	ush(t, alice, "destroy @tick @again")
}
