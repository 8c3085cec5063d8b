package usher

// Chaos tests: the controller, the LNMs and their simulated hypervisors run
// as separate processes of the real `usher` binary; the test process is the
// client. They kill -9 processes, cut the network without closing sockets,
// and check that nothing is lost or duplicated.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"

	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/client"
)

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// usherBinary builds cmd/usher once per test run.
func usherBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "usher-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "usher")
		out, err := exec.Command("go", "build", "-o", buildBin, "./cmd/usher").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/usher: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

type chaos struct {
	t       testing.TB
	bin     string
	dir     string
	addr    string // controller address
	ctlConf string
	mu      sync.Mutex
	procs   map[string]*proc
	haHTTP  map[string]string // HA controllers' HTTP API addresses, by name
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
}

// handedOut are the ports freePort gave this test process: a port
// released by freePort and not bound yet (a process still starting) could
// otherwise be handed out twice.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

func freePort(t testing.TB) string {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		handedOut.Lock()
		dup := handedOut.m[addr]
		handedOut.m[addr] = true
		handedOut.Unlock()
		if !dup {
			return addr
		}
	}
}

func (c *chaos) run(args ...string) {
	c.t.Helper()
	out, err := exec.Command(c.bin, args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("usher %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (c *chaos) write(name, content string) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func newChaos(t testing.TB) *chaos {
	c := &chaos{t: t, bin: usherBinary(t), dir: t.TempDir(), procs: map[string]*proc{}}
	c.addr = freePort(t)
	pki := filepath.Join(c.dir, "pki")
	c.run("ca", "init", "--dir", pki)
	c.run("ca", "issue", "--dir", pki, "--role", "controller", "--name", "ctl", "--host", "127.0.0.1", "--host", "localhost")
	c.writeControllerConf(siteOptions{controller: "max_request_vms = 100000", policy: "watch = false"})
	t.Cleanup(c.stopAll)
	return c
}

// siteOptions vary a test site's controller configuration.
type siteOptions struct {
	controller string            // extra [controller] lines
	policy     string            // extra [policy] lines
	scripts    map[string]string // site policy scripts (policy.dirs)
	vms        int               // alice's VMs to start (default 4)
	grace      string            // controller.grace (default 10s)
	cost       int               // bcrypt cost of the users' passwords (default the minimum)
	enable     []string          // more shipped scripts to enable (drain, failover, …)
}

// writeControllerConf writes the controller's configuration: users alice,
// bob and root (password <user>-pw, root an admin) in an htpasswd file,
// the shipped owner-only and round-robin policies, and o.
func (c *chaos) writeControllerConf(o siteOptions) {
	pki := filepath.Join(c.dir, "pki")
	var ht strings.Builder
	for _, u := range []string{"alice", "bob", "root"} {
		fmt.Fprintf(&ht, "%s:%s\n", u, hashPW(c.t, u+"-pw", o.cost))
	}
	htFile := c.write("users.htpasswd", ht.String())
	dir := filepath.Join(c.dir, "policies")
	os.MkdirAll(dir, 0o755)
	for name, src := range o.scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	c.ctlConf = c.write("controller.toml", fmt.Sprintf(`[controller]
listen = %q
cert_file = %q
key_file = %q
ca_file = %q
state_dir = %q
report_interval = "200ms"
keepalive = "500ms"
write_timeout = "2s"
grace = %q
%s

[policy]
enable = ["auth_htpasswd", "authz_owner", "place_roundrobin"%s]
dirs = [%q]
%s

[policy.config.auth_htpasswd]
file = %q
admins = ["root"]
`, c.addr, filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"),
		filepath.Join(c.dir, "ctl"), cmpOr(o.grace, "10s"), o.controller, extraEnable(o.enable), dir, o.policy, htFile))
}

// extraEnable is o.enable as more entries of a TOML list.
func extraEnable(names []string) string {
	out := ""
	for _, n := range names {
		out += fmt.Sprintf(", %q", n)
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func hashPW(t testing.TB, pw string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), max(cost, bcrypt.MinCost))
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func (c *chaos) start(name string, args []string, conf string) {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "USHER_CONFIG="+conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
}

func (c *chaos) kill9(name string) {
	c.t.Helper()
	c.mu.Lock()
	p := c.procs[name]
	delete(c.procs, name)
	c.mu.Unlock()
	if p == nil {
		c.t.Fatalf("no process %s", name)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (c *chaos) stopAll() {
	c.mu.Lock()
	procs := c.procs
	c.procs = map[string]*proc{}
	c.mu.Unlock()
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
	if c.t.Failed() {
		names := []string{}
		for name := range procs {
			names = append(names, name+".log")
		}
		clients, _ := filepath.Glob(filepath.Join(c.dir, "*.client.log"))
		for _, f := range clients {
			names = append(names, filepath.Base(f))
		}
		for _, name := range names {
			name = strings.TrimSuffix(name, ".log")
			b, _ := os.ReadFile(filepath.Join(c.dir, name+".log"))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			c.t.Logf("--- %s.log (tail) ---\n%s", name, b)
		}
	}
}

func (c *chaos) startController() {
	c.start("controller", []string{"controller"}, c.ctlConf)
	waitfor.Error(c.t, 20*time.Second, "the controller to listen on "+c.addr, func() error {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	})
}

// lnmConf writes the configuration of an LNM with a simulated node of
// practically unbounded size.
func (c *chaos) lnmConf(name, controller string) string {
	return c.lnmConfSized(name, controller, 100000, 100000000)
}

// lnmConfSized is lnmConf for a node of cpus vCPUs and memMB MiB.
func (c *chaos) lnmConfSized(name, controller string, cpus, memMB int) string {
	pki := filepath.Join(c.dir, "pki")
	return c.write("lnm-"+name+".toml", fmt.Sprintf(`[lnm]
name = %q
controller = %q
server_name = "localhost"
cert_file = %q
key_file = %q
ca_file = %q
driver = "sim"
sim_state_file = %q
sim_cpus = %d
sim_mem_mb = %d
recovery_listen = "127.0.0.1:0"
scan_interval = "300ms"
keepalive = "500ms"
write_timeout = "2s"
`, name, controller, filepath.Join(pki, name+".crt"), filepath.Join(pki, name+".key"), filepath.Join(pki, "ca.crt"),
		filepath.Join(c.dir, "sim", name+".json"), cpus, memMB))
}

func (c *chaos) startLNM(name string) {
	c.t.Helper()
	c.startLNMConf(name, c.lnmConf(name, c.addr))
}

// startLNMConf starts LNM name (issuing its certificate once) with conf.
func (c *chaos) startLNMConf(name, conf string) {
	c.t.Helper()
	pki := filepath.Join(c.dir, "pki")
	if _, err := os.Stat(filepath.Join(pki, name+".crt")); err != nil {
		c.run("ca", "issue", "--dir", pki, "--role", "lnm", "--name", name)
	}
	os.MkdirAll(filepath.Join(c.dir, "sim"), 0o755)
	c.start(name, []string{"lnm"}, conf)
}

// startLNMs starts one process hosting count simulated LNMs prefix1…N.
func (c *chaos) startLNMs(prefix string, count int) {
	conf := c.write("lnm-"+prefix+".toml", fmt.Sprintf(`[lnm]
name = %q
controller = %q
server_name = "localhost"
ca_file = %q
driver = "sim"
sim_state_file = %q
sim_cpus = 100000
sim_mem_mb = 100000000
recovery_listen = "127.0.0.1:0"
scan_interval = "2s"
`, prefix, c.addr, filepath.Join(c.dir, "pki", "ca.crt"), filepath.Join(c.dir, "sim-"+prefix)))
	c.start(prefix, []string{"lnm", "--count", fmt.Sprint(count), "--ca-dir", filepath.Join(c.dir, "pki")}, conf)
}

func (c *chaos) client(user string) *client.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.Connect(ctx, client.Config{Addr: c.addr, CAFile: filepath.Join(c.dir, "pki", "ca.crt"),
		ServerName: "localhost", User: user, Password: user + "-pw", MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// simVMs reads every simulated hypervisor's state file: the ground truth of
// which VMs exist where.
func (c *chaos) simVMs(dirs ...string) map[string][]string {
	c.t.Helper()
	out := map[string][]string{}
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(c.dir, d, "*.json"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				c.t.Fatal(err)
			}
			var st struct {
				Node   string `json:"node"`
				Guests []struct {
					Name  string `json:"name"`
					State string `json:"state"`
				} `json:"guests"`
			}
			if err := json.Unmarshal(b, &st); err != nil {
				c.t.Fatalf("%s: %v", f, err)
			}
			for _, d := range st.Guests {
				out[d.Name] = append(out[d.Name], st.Node)
			}
		}
	}
	return out
}

type vmKey struct{ Name, Owner, Cluster, LNM string }

// snapshot is the controller's view: VM set, owners, clusters, placement.
func snapshot(t testing.TB, admin *client.Client) ([]vmKey, *api.ListReply) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lr, err := admin.List(ctx, api.ListArgs{All: true, Lists: true})
	if err != nil {
		return nil, nil
	}
	var out []vmKey
	for _, v := range lr.VMs {
		out = append(out, vmKey{v.Name, v.Owner, v.Cluster, v.LNM})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, lr
}

func equalKeys(a, b []vmKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// waitState polls the controller until its view equals want (or ok says so).
func waitState(t testing.TB, admin *client.Client, d time.Duration, ok func([]vmKey, *api.ListReply) bool) ([]vmKey, *api.ListReply) {
	t.Helper()
	var keys []vmKey
	var lr *api.ListReply
	waitfor.Error(t, d, "the expected state", func() error {
		if !admin.Connected() {
			return errors.New("admin client not connected")
		}
		if keys, lr = snapshot(t, admin); lr != nil && ok(keys, lr) {
			return nil
		}
		var lists []string
		if lr != nil {
			for _, l := range [][]*api.VM{lr.Lost, lr.Missing, lr.Unmanaged, lr.Conflicts} {
				var ns []string
				for _, v := range l {
					ns = append(ns, v.Name+"@"+v.LNM+"("+string(v.State)+")")
				}
				lists = append(lists, strings.Join(ns, " "))
			}
		}
		return fmt.Errorf("VMs %v; lost, missing, unmanaged, conflicts: %q", keys, lists)
	})
	return keys, lr
}

func allRunning(n int) func([]vmKey, *api.ListReply) bool {
	return func(keys []vmKey, lr *api.ListReply) bool {
		if len(keys) != n || len(lr.Lost)+len(lr.Missing) != 0 {
			return false
		}
		for _, v := range lr.VMs {
			if v.State != api.StateRunning && v.State != api.StatePaused {
				return false
			}
		}
		return true
	}
}

// retry runs f until it succeeds with a reply from the controller (the
// controller may be down or restarting), bounded in time.
func retry[T any](t testing.TB, what string, f func(ctx context.Context) (T, error)) T {
	var v T
	err := waitfor.Poll(context.Background(), 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		v, err = f(ctx)
		return err
	})
	if err != nil {
		t.Errorf("%s: still failing: %v", what, err)
	}
	return v
}

func TestChaosControllerKill9(t *testing.T) {
	c := newChaos(t)
	c.startController()
	for i := 1; i <= 3; i++ {
		c.startLNM(fmt.Sprintf("node%d", i))
	}
	alice := c.client("alice")
	root := c.client("root")
	waitLNMs(t, root, 3)

	const requests, per = 30, 2
	progress := make(chan int, requests)
	started := map[string][]string{} // request id → VM names reported started
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= requests; i++ {
			id := fmt.Sprintf("req-%d", i)
			res := retry(t, id, func(ctx context.Context) (*api.Result, error) {
				return alice.Start(ctx, api.StartArgs{ID: id, Cluster: fmt.Sprintf("c%d", i%4), Count: per})
			})
			if res == nil {
				return
			}
			var names []string
			for _, d := range res.Done {
				if d.OK {
					names = append(names, d.Name)
				}
			}
			mu.Lock()
			started[id] = names
			mu.Unlock()
			if len(names) > 0 {
				// an operation in the stream too (ops may hit the crash window)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				alice.OpOnNames(ctx, api.OpPause, names[:1], nil)
				cancel()
			}
			progress <- i
		}
	}()
	for n := 0; n < 8; n++ {
		<-progress
	}
	c.kill9("controller")
	c.startController()
	go func() {
		for range progress {
		}
	}()
	wg.Wait()
	close(progress)

	// Every VM a request reported started exists exactly once, none lost.
	keys, _ := waitState(t, root, 60*time.Second, func(keys []vmKey, lr *api.ListReply) bool {
		return len(lr.Lost)+len(lr.Missing) == 0 && len(keys) == requests*per
	})
	truth := c.simVMs("sim")
	if len(truth) != requests*per {
		t.Fatalf("hypervisors hold %d VMs, want %d (duplicates or losses)", len(truth), requests*per)
	}
	for name, nodes := range truth {
		if len(nodes) != 1 {
			t.Fatalf("%s exists on %v", name, nodes)
		}
	}
	byName := map[string]vmKey{}
	for _, k := range keys {
		byName[k.Name] = k
	}
	for id, names := range started {
		if len(names) != per {
			t.Errorf("%s reported %d of %d started", id, len(names), per)
		}
		for _, n := range names {
			k, ok := byName[n]
			if !ok || truth[n][0] != k.LNM || k.Owner != "alice" {
				t.Errorf("%s (from %s): controller %+v, hypervisor %v", n, id, k, truth[n])
			}
		}
	}

	// A clean crash: the rebuilt state equals the state before it.
	before, _ := snapshot(t, root)
	c.kill9("controller")
	c.startController()
	after, _ := waitState(t, root, 60*time.Second, func(keys []vmKey, lr *api.ListReply) bool {
		return equalKeys(keys, before)
	})
	if !equalKeys(before, after) {
		t.Fatal("state differs after recovery")
	}
	// and the rebuilt clusters keep their members
	// (alice's client reconnects on its own, with backoff)
	cls := retry(t, "clusters", func(ctx context.Context) ([]api.Cluster, error) { return alice.Clusters(ctx, false) })
	if len(cls) != 4 {
		t.Fatalf("clusters after recovery: %+v", cls)
	}
	// The client reconnected, flushed its cache and reloaded it.
	if got := len(alice.VMs()); got != requests*per {
		t.Fatalf("client cache holds %d VMs after reconnecting, want %d", got, requests*per)
	}

	// A retried request id after the crash starts nothing new.
	res := retry(t, "replay", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{ID: "req-1", Cluster: "c1", Count: per})
	})
	if res == nil || len(res.Done) != per {
		t.Fatalf("replay: %+v", res)
	}
	if got := len(c.simVMs("sim")); got != requests*per {
		t.Fatalf("replayed request created VMs: %d", got)
	}
}

func waitLNMs(t testing.TB, cl *client.Client, n int) {
	t.Helper()
	waitfor.Error(t, 60*time.Second, fmt.Sprintf("%d LNMs connected", n), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lnms, err := cl.ListLNMs(ctx, nil, false)
		if err != nil {
			return err
		}
		up := 0
		for _, l := range lnms {
			if l.State == api.LNMConnected {
				up++
			}
		}
		if up < n {
			return fmt.Errorf("%d of %d connected", up, n)
		}
		return nil
	})
}

// lostWithin waits for every VM in names to be pushed as lost.
func lostWithin(t testing.TB, rec *recorder, names []string) {
	t.Helper()
	for _, n := range names {
		rec.waitFor(t, "vm_lost "+n, func(ev api.Event) bool { return ev.Type == api.EvVMLost && ev.VM.Name == n })
	}
}

func TestChaosLNMKill9(t *testing.T) {
	c := newChaos(t)
	c.startController()
	c.startLNM("node1")
	c.startLNM("node2")
	alice := c.client("alice")
	root := c.client("root")
	waitLNMs(t, root, 2)
	rec := record(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := alice.Start(ctx, api.StartArgs{Cluster: "db", Count: 4, LNMs: []string{"node2"}})
	if err != nil || res.OK() != 4 {
		t.Fatalf("%v %+v", err, res)
	}
	var names []string
	for _, d := range res.Done {
		names = append(names, d.Name)
	}
	killed := time.Now()
	c.kill9("node2")
	lostWithin(t, rec, names)
	if d := time.Since(killed); d > 5*time.Second {
		t.Fatalf("LNM failure detected after %v", d)
	}
	c.startLNM("node2")
	for _, n := range names {
		rec.waitFor(t, "back "+n, func(ev api.Event) bool {
			return ev.Type == api.EvStateChanged && ev.VM.Name == n && ev.VM.State == api.StateRunning
		})
	}
	waitState(t, root, 30*time.Second, allRunning(4))
}

// proxy forwards TCP to target until frozen; frozen, it stops forwarding
// without closing anything, like a cut network.
type proxy struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			if p.frozen.Load() {
				p.mu.Lock()
				p.conns = append(p.conns, in) // held open, never answered
				p.mu.Unlock()
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go p.pump(in, out)
			go p.pump(out, in)
		}
	}()
	return p
}

func (p *proxy) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		if p.frozen.Load() {
			// drop everything from now on, keep the sockets open
			io.Copy(io.Discard, src)
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func TestChaosNetworkCut(t *testing.T) {
	c := newChaos(t)
	c.startController()
	p := newProxy(t, c.addr)
	pki := filepath.Join(c.dir, "pki")
	c.run("ca", "issue", "--dir", pki, "--role", "lnm", "--name", "node1")
	os.MkdirAll(filepath.Join(c.dir, "sim"), 0o755)
	c.start("node1", []string{"lnm"}, c.lnmConf("node1", p.ln.Addr().String()))
	alice := c.client("alice")
	root := c.client("root")
	waitLNMs(t, root, 1)
	rec := record(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 3})
	if err != nil || res.OK() != 3 {
		t.Fatalf("%v %+v", err, res)
	}
	var names []string
	for _, d := range res.Done {
		names = append(names, d.Name)
	}
	cut := time.Now()
	p.frozen.Store(true)
	lostWithin(t, rec, names)
	// keepalive bound: 3 report intervals (200ms) + keepalive (500ms), with slack
	if d := time.Since(cut); d > 5*time.Second {
		t.Fatalf("cut detected after %v", d)
	}
	p.frozen.Store(false)
	for _, n := range names {
		rec.waitFor(t, "back "+n, func(ev api.Event) bool {
			return ev.Type == api.EvStateChanged && ev.VM.Name == n && ev.VM.State == api.StateRunning
		})
	}
}

func TestChaosAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale chaos test skipped in -short mode")
	}
	const lnms, vms, batch = 200, 2000, 100
	c := newChaos(t)
	c.startController()
	c.startLNMs("sim", lnms)
	alice := c.client("alice")
	root := c.client("root")
	waitLNMs(t, root, lnms)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for i := 0; i < vms/batch; i++ {
		res, err := alice.Start(ctx, api.StartArgs{ID: fmt.Sprintf("s%d", i), Cluster: fmt.Sprintf("big%d", i%10), Count: batch})
		if err != nil || res.OK() != batch {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	before, _ := waitState(t, root, 60*time.Second, allRunning(vms))

	// kill -9 the controller: the state is rebuilt exactly
	c.kill9("controller")
	restart := time.Now()
	c.startController()
	waitState(t, root, 90*time.Second, func(keys []vmKey, lr *api.ListReply) bool { return equalKeys(keys, before) })
	t.Logf("controller restart → state whole: %v (%d LNMs, %d VMs)", time.Since(restart), lnms, vms)

	// kill -9 the process hosting every LNM: all VMs lost, then back
	c.kill9("sim")
	waitState(t, root, 60*time.Second, func(keys []vmKey, lr *api.ListReply) bool { return len(lr.Lost) == vms })
	c.startLNMs("sim", lnms)
	waitState(t, root, 90*time.Second, allRunning(vms))
	after, _ := snapshot(t, root)
	if !equalKeys(before, after) {
		t.Fatal("state differs after the LNMs returned")
	}
	if got := len(c.simVMs("sim-sim")); got != vms {
		t.Fatalf("hypervisors hold %d VMs, want %d", got, vms)
	}
}

// twoNodesFourVMs starts a controller and LNMs node1 and node2, starts
// four of alice's VMs, and returns the site, root's client and the VMs.
func twoNodesFourVMs(t *testing.T) (*chaos, *client.Client, []vmKey) {
	t.Helper()
	c := newChaos(t)
	c.startController()
	c.startLNM("node1")
	c.startLNM("node2")
	root := c.client("root")
	waitLNMs(t, root, 2)
	alice := c.client("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 4}); err != nil || r.OK() != 4 {
		t.Fatalf("%v %+v", err, r)
	}
	before, _ := snapshot(t, root)
	return c, root, before
}

// A restarted controller on a new address reaches its LNMs only through
// the recovery announcement (their configured address is the old one).
func TestChaosControllerNewAddress(t *testing.T) {
	c, _, before := twoNodesFourVMs(t)
	c.kill9("controller")
	old := c.addr
	c.addr = freePort(t)
	conf, err := os.ReadFile(c.ctlConf)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(c.ctlConf, []byte(strings.Replace(string(conf), old, c.addr, 1)), 0o600)
	c.startController()
	root2 := c.client("root")
	waitLNMs(t, root2, 2)
	after, _ := waitState(t, root2, 30*time.Second, func(keys []vmKey, lr *api.ListReply) bool { return equalKeys(keys, before) })
	if !equalKeys(before, after) {
		t.Fatal("state differs")
	}
}

// A client that connects while a restarted controller is still waiting for
// known LNMs loads what is back so far; the VMs adopted after that are not
// streamed to it one by one: it gets one recovered event when the state is
// whole and reloads its cache then.
func TestChaosClientsReloadWhenRecovered(t *testing.T) {
	c, root, before := twoNodesFourVMs(t)
	onNode2 := 0
	for _, k := range before {
		if k.LNM == "node2" {
			onNode2++
		}
	}
	if onNode2 == 0 || onNode2 == len(before) {
		t.Fatalf("placement put %d of %d VMs on node2; the test needs some on each node", onNode2, len(before))
	}
	c.kill9("node2")
	c.kill9("controller")
	c.startController()
	waitLNMs(t, root, 1)      // node1 is back
	late := c.client("alice") // while node2 is still expected back
	rec := record(late)
	if got := len(late.VMs()); got != len(before)-onNode2 {
		t.Fatalf("client connected during recovery holds %d VMs, want node1's %d", got, len(before)-onNode2)
	}
	c.startLNM("node2")
	ev := rec.waitFor(t, "recovered", func(ev api.Event) bool { return ev.Type == api.EvRecovered })
	if ev.Detail["lnms"] != "2" || ev.Detail["vms"] != fmt.Sprint(len(before)) {
		t.Fatalf("recovered event %+v, want 2 LNMs and %d VMs", ev.Detail, len(before))
	}
	waitfor.Error(t, 10*time.Second, "the client cache to reload after the recovered event", func() error {
		if n := len(late.VMs()); n != len(before) {
			return fmt.Errorf("it holds %d VMs, want %d", n, len(before))
		}
		return nil
	})
	for _, ev := range rec.all() {
		if ev.Type == api.EvStateChanged && ev.Detail["adopted"] == "true" {
			t.Fatalf("adoption streamed to a client during recovery: %+v", ev)
		}
	}
}

// After a restart the controller gives known LNMs a grace period: one that
// does not come back is listed as recovering, then declared failed.
func TestChaosGracePeriod(t *testing.T) {
	c := newChaos(t)
	conf, _ := os.ReadFile(c.ctlConf)
	os.WriteFile(c.ctlConf, []byte(strings.Replace(string(conf), `grace = "10s"`, `grace = "3s"`, 1)), 0o600)
	c.startController()
	c.startLNM("node1")
	c.startLNM("node2")
	root := c.client("root")
	waitLNMs(t, root, 2)
	c.kill9("node2")
	c.kill9("controller")
	c.startController()
	root2 := c.client("root")
	waitLNMs(t, root2, 1)
	state := func() map[string]api.LNMState {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lnms, err := root2.ListLNMs(ctx, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]api.LNMState{}
		for _, l := range lnms {
			m[l.Info.Name] = l.State
		}
		return m
	}
	if st := state(); st["node1"] != api.LNMConnected || st["node2"] != api.LNMRecovering {
		t.Fatalf("during grace: %v", st)
	}
	waitfor.Error(t, 20*time.Second, "node2 declared failed", func() error {
		if st := state(); st["node2"] != api.LNMDisconnected {
			return fmt.Errorf("LNM states %v", st)
		}
		return nil
	})
	if st := state(); st["node1"] != api.LNMConnected {
		t.Fatalf("node1 after grace: %v", st)
	}
}
