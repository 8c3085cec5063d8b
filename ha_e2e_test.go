package usher

// The HA footing with real processes: three `usher etcd` members over TLS
// with the site's certificates, controllers' elections through them.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/internal/waitfor"
)

// etcdCluster starts three members m0..m2 as processes of the usher
// binary, TLS with the chaos site's CA, clients limited to "ctl".
func (c *chaos) etcdCluster() []string {
	c.t.Helper()
	pki := filepath.Join(c.dir, "pki")
	var peers, clients []string
	type ports struct{ client, peer string }
	var ps []ports
	for i := 0; i < 3; i++ {
		p := ports{freePort(c.t), freePort(c.t)}
		ps = append(ps, p)
		name := fmt.Sprintf("m%d", i)
		c.run("ca", "issue", "--dir", pki, "--role", "controller", "--name", name, "--host", "127.0.0.1")
		peers = append(peers, fmt.Sprintf("%s=https://%s", name, p.peer))
		clients = append(clients, "https://"+p.client)
	}
	for i, p := range ps {
		name := fmt.Sprintf("m%d", i)
		args := []string{"etcd", "--name", name, "--data-dir", filepath.Join(c.dir, "etcd-"+name),
			"--client-url", "https://" + p.client, "--peer-url", "https://" + p.peer,
			"--initial-cluster", join(peers), "--cluster-token", "chaos",
			"--cert-file", filepath.Join(pki, name+".crt"), "--key-file", filepath.Join(pki, name+".key"),
			"--ca-file", filepath.Join(pki, "ca.crt"), "--allowed-cn", "ctl", "--tick-ms", "50", "--election-ms", "500"}
		c.start(name, args, "/dev/null")
	}
	return clients
}

func join(xs []string) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}

// TestEtcdMembersTLSAndElection: a three-member cluster over TLS elects
// one of three controllers; a certificate of the site CA that is not a
// controller's is refused; killing one member (kill -9) leaves the
// leader's guarded writes working; killing the leader's etcd client makes
// another controller lead in a higher term.
func TestEtcdMembersTLSAndElection(t *testing.T) {
	c := newChaos(t)
	eps := c.etcdCluster()
	pki := filepath.Join(c.dir, "pki")
	tlsCfg, err := ha.ClientTLS(filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// An LNM's certificate (same CA, another name) is not let in.
	c.run("ca", "issue", "--dir", pki, "--role", "lnm", "--name", "intruder")
	bad, err := ha.ClientTLS(filepath.Join(pki, "intruder.crt"), filepath.Join(pki, "intruder.key"), filepath.Join(pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Error(t, 90*time.Second, "the etcd cluster to serve", func() error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tlsCfg, DialTimeout: 2 * time.Second})
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = cli.Put(ctx, "/usher/ping", "1")
		return err
	})
	func() {
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: bad, DialTimeout: 2 * time.Second})
		if err != nil {
			return
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, "/usher/intrusion", "1"); err == nil {
			t.Fatal("a non-controller certificate wrote to etcd")
		}
	}()

	rec := map[string]int64{}
	var mu sync.Mutex
	members := map[string]*ha.Member{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		wg.Wait()
		for _, m := range members {
			m.Close()
		}
	}()
	for _, id := range []string{"c1", "c2", "c3"} {
		m, err := ha.New(ha.Config{Endpoints: eps, TLS: tlsCfg, Prefix: "/usher/chaos/", TTL: 3 * time.Second, ID: id, Address: id + ":7000"})
		if err != nil {
			t.Fatal(err)
		}
		members[id] = m
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.Run(ctx, func(lctx context.Context, term int64) {
				mu.Lock()
				rec[id] = term
				mu.Unlock()
				<-lctx.Done()
				mu.Lock()
				delete(rec, id)
				mu.Unlock()
			})
		}()
	}
	leader := func() (string, int64) {
		mu.Lock()
		defer mu.Unlock()
		if len(rec) != 1 {
			return "", 0
		}
		for id, term := range rec {
			return id, term
		}
		return "", 0
	}
	var first string
	var term int64
	waitfor.True(t, 60*time.Second, "one leader", func() bool { first, term = leader(); return first != "" })
	c.kill9("m0")
	waitfor.Error(t, 60*time.Second, "a guarded write with one member down", func() error {
		wctx, wcancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer wcancel()
		return members[first].Put(wctx, term, "known/n1", "x")
	})
	members[first].Close()
	t0 := time.Now()
	waitfor.True(t, 60*time.Second, "another leader", func() bool {
		id, tm := leader()
		return id != "" && id != first && tm > term
	})
	second, term2 := leader()
	t.Logf("%s led in term %d; %s leads in term %d, %v after %s's etcd client closed (one member down)", first, term, second, term2, time.Since(t0).Round(time.Millisecond), first)
	if err := members[first].Put(context.Background(), term, "known/n1", "stale"); !errors.Is(err, ha.ErrNotLeader) {
		t.Fatalf("the old leader wrote: %v", err)
	}
}

// TestHAControllerFailover: two controllers share a three-member etcd;
// the LNMs and clients know both addresses. One etcd member is lost, then
// the leader (kill -9 both): the
// standby leads in a higher term, every LNM registers with it, every VM
// is accounted for, new starts are served, and what lives in etcd (known
// LNMs, a node's mode) is there.
func TestHAControllerFailover(t *testing.T) {
	c := newChaos(t)
	// A policy numbering VMs through usher.store: replicated, the
	// numbers go on across the failover.
	os.MkdirAll(filepath.Join(c.dir, "policies"), 0o755)
	c.write(filepath.Join("policies", "seq.lua"), `usher.on("register_vm", function(req, vm)
  vm.data.seq = tostring(usher.store.incr("seq"))
end)`)
	eps, both := c.startHA("n1", "n2", "n3")
	root, alice := c.haClient("root", both), c.haClient("alice", both)
	waitLNMs(t, root, 3)
	res := retry(t, "start", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "ha", Count: 6, ID: "ha-6"})
	})
	if res == nil || res.OK() != 6 {
		t.Fatalf("start: %+v", res)
	}
	if _, err := root.SetLNMMode(context.Background(), "n3", api.ModeIsolated, "replicated?"); err != nil {
		t.Fatal(err)
	}
	// What a lone controller keeps in its state directory: in etcd.
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvVr1Xn2zS1p3Zc0Pq3A1C7dUIxFt8e0XyE0m2cQ0tA alice@ha"
	if _, err := alice.Keys(context.Background(), api.KeysArgs{Action: api.KeysAdd, Key: key}); err != nil {
		t.Fatal(err)
	}
	tok, err := alice.Tokens(context.Background(), api.TokensArgs{Action: api.TokensCreate, Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	resv, err := root.Reservations(context.Background(), api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 256, LNMs: []string{"n1"}, For: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := waitState(t, root, 30*time.Second, allRunning(6))

	// Who leads: the election's record in etcd.
	leaderNow := c.haLeader(eps)
	leader := leaderNow()
	// A client that knows only the standby is sent to the leader.
	standby := strings.Replace(both, leader.Address, "", 1)
	standby = strings.Trim(standby, ",")
	via, err := client.Connect(context.Background(), client.Config{Addr: standby, CAFile: filepath.Join(c.dir, "pki", "ca.crt"),
		ServerName: "localhost", User: "alice", Password: "alice-pw"})
	if err != nil {
		t.Fatalf("a client of the standby %s: %v", standby, err)
	}
	if n := len(via.VMs()); n != 6 {
		t.Fatalf("the client sent to the leader sees %d VMs", n)
	}
	via.Close()
	// So is an HTTP API client: a redirect to the same path on the
	// leader's HTTP API, where the token works.
	get := c.haHTTPGet(tok.Secret)
	var standbyID string
	for id := range c.haHTTP {
		if id != leader.ID {
			standbyID = id
		}
	}
	if code, loc, _ := get("https://" + c.haHTTP[standbyID] + "/api/v1/vms"); code != http.StatusTemporaryRedirect || loc != "https://"+c.haHTTP[leader.ID]+"/api/v1/vms" {
		t.Fatalf("the standby's HTTP API: %d to %q; want 307 to the leader's", code, loc)
	}
	if code, _, body := get("https://" + c.haHTTP[leader.ID] + "/api/v1/vms"); code != http.StatusOK || countVMs(body) != 6 {
		t.Fatalf("the leader's HTTP API: %d %s", code, body)
	}
	// One etcd member is lost too: the other two are a quorum.
	c.kill9("m2")
	killed := time.Now()
	c.kill9(leader.ID)
	var next ha.Leader
	waitfor.True(t, 60*time.Second, "another leader", func() bool {
		next = leaderNow()
		return next.ID != leader.ID && next.Term > leader.Term
	})
	waitLNMs(t, root, 3)
	after, _ := waitState(t, root, 60*time.Second, allRunning(6))
	t.Logf("%s (term %d) killed; %s leads in term %d; the site was whole again %v later", leader.ID, leader.Term, next.ID, next.Term, time.Since(killed).Round(10*time.Millisecond))
	// usher controller status, with the survivor's configuration.
	st := exec.Command(c.bin, "controller", "status")
	st.Env = append(os.Environ(), "USHER_CONFIG="+filepath.Join(c.dir, next.ID+".toml"))
	out, err := st.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("leader: %s at %s, term %d", next.ID, next.Address, next.Term)) ||
		strings.Count(string(out), "ok, version") != 2 || !strings.Contains(string(out), "DOWN") {
		t.Fatalf("usher controller status: %v\n%s", err, out)
	}
	t.Logf("usher controller status:\n%s", out)
	if !equalKeys(before, after) {
		t.Fatalf("VMs before %v, after %v", before, after)
	}
	onlyOnce(t, c, mustList(t, root))
	if l := lnmRecord(t, root, "n3"); l.Mode != api.ModeIsolated || l.ModeReason != "replicated?" {
		t.Fatalf("n3's mode after failover: %+v", l)
	}
	if kr := retry(t, "keys", func(ctx context.Context) (api.KeysReply, error) {
		return alice.Keys(ctx, api.KeysArgs{Action: api.KeysList})
	}); len(kr.Keys) != 1 {
		t.Fatalf("alice's keys after failover: %+v", kr)
	}
	if tr := retry(t, "tokens", func(ctx context.Context) (api.TokensReply, error) {
		return alice.Tokens(ctx, api.TokensArgs{Action: api.TokensList})
	}); len(tr.Tokens) != 1 || tr.Tokens[0].ID != tok.Tokens[0].ID {
		t.Fatalf("alice's tokens after failover: %+v", tr)
	}
	if rr := retry(t, "reservations", func(ctx context.Context) (api.ReservationsReply, error) {
		return root.Reservations(ctx, api.ReservationsArgs{Action: api.ResList, All: true})
	}); len(rr.Reservations) != 1 || rr.Reservations[0].ID != resv.Reservations[0].ID || rr.Reservations[0].State != api.ResActive {
		t.Fatalf("reservations after failover: %+v", rr)
	}
	// The token, replicated, works on the new leader's HTTP API.
	if code, _, body := get("https://" + c.haHTTP[next.ID] + "/api/v1/vms"); code != http.StatusOK || countVMs(body) != 6 {
		t.Fatalf("the new leader's HTTP API: %d %s", code, body)
	}
	res = retry(t, "start after failover", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "after", Count: 2, ID: "after-2"})
	})
	if res == nil || res.OK() != 2 {
		t.Fatalf("start after failover: %+v", res)
	}
	seqs := map[string]bool{}
	for _, d := range res.Done {
		seqs[d.VM.Data["seq"]] = true
	}
	if !seqs["7"] || !seqs["8"] {
		t.Fatalf("usher.store did not go on across the failover: the new VMs are numbered %v (want 7 and 8)", seqs)
	}
	// alice's client cache resynced on the new leader (as after a
	// restart) and follows its events: her 8 VMs, each once.
	waitfor.True(t, 60*time.Second, "alice's cache to hold her 8 VMs", func() bool {
		names := map[string]bool{}
		for _, v := range alice.VMs() {
			names[v.Name] = true
		}
		return len(names) == 8 && len(alice.VMs()) == 8
	})
}

func mustList(t *testing.T, cl *client.Client) *api.ListReply {
	t.Helper()
	_, lr := snapshot(t, cl)
	if lr == nil {
		t.Fatal("no list")
	}
	return lr
}

// haHTTPGet returns a GET with the bearer token tok that does not follow
// redirects: status, Location and body.
func (c *chaos) haHTTPGet(tok string) func(url string) (int, string, string) {
	c.t.Helper()
	pem, err := os.ReadFile(filepath.Join(c.dir, "pki", "ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 20 * time.Second}
	c.t.Cleanup(hc.CloseIdleConnections)
	return func(url string) (int, string, string) {
		c.t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			c.t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location"), string(b)
	}
}

// countVMs counts the VMs of a list reply's JSON (-1: not one).
func countVMs(body string) int {
	var lr api.ListReply
	if json.Unmarshal([]byte(body), &lr) != nil {
		return -1
	}
	return len(lr.VMs)
}

// signal sends sig to process name.
func (c *chaos) signal(name string, sig os.Signal) {
	c.t.Helper()
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		c.t.Fatalf("no process %s", name)
	}
	p.cmd.Process.Signal(sig)
}

// startHA starts two HA controllers over a three-member etcd and the
// named LNMs knowing both; it returns both addresses joined.
func (c *chaos) startHA(lnms ...string) (eps []string, both string) {
	c.t.Helper()
	return c.startHAVia(nil, lnms...)
}

// startHAVia is startHA with each controller's etcd endpoints given by
// route (nil: the members' own).
func (c *chaos) startHAVia(route func(ctl string, eps []string) []string, lnms ...string) (eps []string, both string) {
	c.t.Helper()
	eps = c.etcdCluster()
	addrs := []string{c.addr, freePort(c.t)}
	base, err := os.ReadFile(c.ctlConf)
	if err != nil {
		c.t.Fatal(err)
	}
	for i, name := range []string{"ctl1", "ctl2"} {
		via := eps
		if route != nil {
			via = route(name, eps)
		}
		if c.haHTTP == nil {
			c.haHTTP = map[string]string{}
		}
		c.haHTTP[name] = freePort(c.t)
		conf := strings.Replace(string(base), fmt.Sprintf("listen = %q", c.addr), fmt.Sprintf("listen = %q\nadvertise = %q\nid = %q\netcd = [%q, %q, %q]\netcd_ttl = \"3s\"\nhttp_listen = %q", addrs[i], addrs[i], name, via[0], via[1], via[2], c.haHTTP[name]), 1)
		conf = strings.Replace(conf, filepath.Join(c.dir, "ctl")+`"`, filepath.Join(c.dir, name)+`"`, 1)
		c.start(name, []string{"controller"}, c.write(name+".toml", conf))
	}
	both = strings.Join(addrs, ",")
	for _, n := range lnms {
		c.startLNMConf(n, c.lnmConf(n, both))
	}
	return eps, both
}

// haClient connects user to whichever of the HA controllers at addrs
// leads, waiting for one to.
func (c *chaos) haClient(user, addrs string) *client.Client {
	c.t.Helper()
	var cl *client.Client
	// Its log (reconnects, redirects) is shown with the processes' when
	// the test fails.
	logf, err := os.Create(filepath.Join(c.dir, user+".client.log"))
	if err != nil {
		c.t.Fatal(err)
	}
	waitfor.Error(c.t, 90*time.Second, user+" connected to the leader", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		cl, err = client.Connect(ctx, client.Config{Addr: addrs, CAFile: filepath.Join(c.dir, "pki", "ca.crt"), ServerName: "localhost",
			User: user, Password: user + "-pw", MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
			Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		return err
	})
	c.t.Cleanup(func() { cl.Close(); logf.Close() })
	return cl
}

// haLeader returns a function asking etcd (eps) who leads the chaos site,
// waiting up to a minute for a leader.
func (c *chaos) haLeader(eps []string) func() ha.Leader {
	c.t.Helper()
	pki := filepath.Join(c.dir, "pki")
	tlsCfg, err := ha.ClientTLS(filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	obs, err := ha.New(ha.Config{Endpoints: eps, TLS: tlsCfg, Prefix: "/usher/usher.local/", ID: "observer", Address: "-"})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { obs.Close() })
	return func() ha.Leader {
		var l ha.Leader
		waitfor.Error(c.t, 60*time.Second, "a leader", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			l, err = obs.CurrentLeader(ctx)
			return err
		})
		return l
	}
}

// TestHAPausedLeaderIsFenced: the leader is frozen (SIGSTOP: it can
// neither renew its lease nor notice, its sessions stay open, as in a
// partition from etcd); the standby leads in a newer term and the LNMs
// follow it. Woken up, the old leader stops on its own: it neither keeps
// the LNMs nor acts on them, and the site stays whole.
func TestHAPausedLeaderIsFenced(t *testing.T) {
	c := newChaos(t)
	eps, both := c.startHA("n1", "n2")
	root, alice := c.haClient("root", both), c.haClient("alice", both)
	waitLNMs(t, root, 2)
	if res := retry(t, "start", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "p", Count: 4, ID: "p-4"})
	}); res == nil || res.OK() != 4 {
		t.Fatalf("start: %+v", res)
	}
	before, _ := waitState(t, root, 30*time.Second, allRunning(4))
	leader := c.haLeader(eps)
	old := leader()
	c.signal(old.ID, syscall.SIGSTOP)
	var next ha.Leader
	waitfor.True(t, 60*time.Second, "a new leader while the old one is frozen", func() bool {
		next = leader()
		return next.ID != old.ID && next.Term > old.Term
	})
	waitLNMs(t, root, 2)
	waitState(t, root, 60*time.Second, allRunning(4))
	c.signal(old.ID, syscall.SIGCONT)
	// Woken, the old leader stands down; the new one keeps the site.
	logf := filepath.Join(c.dir, old.ID+".log")
	waitfor.True(t, 60*time.Second, old.ID+" to stand down", func() bool {
		b, _ := os.ReadFile(logf)
		return strings.Contains(string(b), "no longer leading")
	})
	c.goesOn(alice, root, before, leader, next, "the old one woke")
}

// goesOn checks a site after its leader changed (what: to what) and the
// old one came back: a start of two VMs is served, every VM of before is
// still there, each VM runs on one hypervisor, and next still leads. It
// returns the list.
func (c *chaos) goesOn(alice, root *client.Client, before []vmKey, leader func() ha.Leader, next ha.Leader, what string) *api.ListReply {
	t := c.t.(*testing.T)
	t.Helper()
	if res := retry(t, "start after "+what, func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "q", Count: 2, ID: "q-2"})
	}); res == nil || res.OK() != 2 {
		t.Fatalf("start after %s: %+v", what, res)
	}
	after, lr := waitState(t, root, 60*time.Second, allRunning(len(before)+2))
	onlyOnce(t, c, lr)
	for _, k := range before {
		if !slices.Contains(after, k) {
			t.Errorf("%+v gone after %s", k, what)
		}
	}
	if l := leader(); l.ID != next.ID || l.Term != next.Term {
		t.Fatalf("leader after %s: %+v (was %+v)", what, l, next)
	}
	return lr
}

// TestChaosHALeaderKills: under a steady load of starts (each retried
// with its request id until it succeeds), the leader is killed with -9
// ten times (and restarted, to stand by), then both controllers at once.
// At the end every request made exactly the VMs it asked for — none lost,
// none twice — every VM runs on exactly one hypervisor, and the site
// serves.
func TestChaosHALeaderKills(t *testing.T) {
	c := newChaos(t)
	eps, both := c.startHA("n1", "n2", "n3")
	root, alice := c.haClient("root", both), c.haClient("alice", both)
	waitLNMs(t, root, 3)
	leader := c.haLeader(eps)
	confOf := func(id string) string { return filepath.Join(c.dir, id+".toml") }

	// The load: requests load-0, load-1, … of two VMs each, each retried
	// with its id until it succeeds.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("load-%d", i)
			err := waitfor.Poll(context.Background(), 120*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				r, err := alice.Start(ctx, api.StartArgs{Cluster: "load", Count: 2, ID: id})
				if err == nil && r.OK() != 2 {
					err = fmt.Errorf("%d of 2 started: %+v", r.OK(), r.Done)
				}
				return err
			})
			if err != nil {
				t.Errorf("request %s never succeeded: %v", id, err)
				return
			}
			mu.Lock()
			done++
			mu.Unlock()
		}
	}()
	progress := func() int { mu.Lock(); defer mu.Unlock(); return done }
	for k := 0; k < 10; k++ {
		n := progress()
		waitfor.True(t, 120*time.Second, "the load to go on", func() bool { return progress() > n })
		old := leader()
		c.kill9(old.ID)
		waitfor.True(t, 60*time.Second, "a new leader", func() bool { l := leader(); return l.ID != old.ID && l.Term > old.Term })
		c.start(old.ID, []string{"controller"}, confOf(old.ID)) // back, to stand by
	}
	// Both at once.
	c.kill9("ctl1")
	c.kill9("ctl2")
	c.start("ctl1", []string{"controller"}, confOf("ctl1"))
	c.start("ctl2", []string{"controller"}, confOf("ctl2"))
	n := progress()
	waitfor.True(t, 120*time.Second, "the load to go on after both restarted", func() bool { return progress() > n })
	close(stop)
	wg.Wait()
	total := progress()
	waitLNMs(t, root, 3)
	_, lr := waitState(t, root, 120*time.Second, allRunning(2*total))
	per := map[string]int{}
	for _, v := range lr.VMs {
		per[v.Request]++
	}
	for i := 0; i < total; i++ {
		if id := fmt.Sprintf("load-%d", i); per[id] != 2 {
			t.Errorf("request %s made %d VMs", id, per[id])
		}
	}
	onlyOnce(t, c, lr)
	t.Logf("%d requests of 2 VMs across 10 leader kills and a restart of both controllers", total)
}
