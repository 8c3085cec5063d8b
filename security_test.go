package usher

// Attacks on a running site (docs/security.md): the controller and the
// LNMs are processes of the real `usher` binary on loopback; the test is
// the attacker (a user, an admin, a holder of a node certificate, a
// network peer) and then checks that the site still answers correctly,
// that no VM was lost or duplicated, that the state's invariants hold
// (index, lists, capacity: the admin status call checks them) and that
// the controller's goroutines and memory are back to their baseline.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/transport"
)

// secSite is a site under attack: a controller process, two LNM processes
// (node1, node2) and alice's VMs web1..web4.
type secSite struct {
	*chaos
	admin, alice *client.Client
	before       []vmKey
	base         api.Status
}

func newSecSite(t *testing.T, o siteOptions) *secSite {
	t.Helper()
	c := newChaos(t)
	c.writeControllerConf(o)
	c.startController()
	c.startLNM("node1")
	c.startLNM("node2")
	s := &secSite{chaos: c}
	s.admin = c.client("root")
	waitLNMs(t, s.admin, 2)
	s.alice = c.client("alice")
	if o.vms == 0 {
		o.vms = 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r, err := s.alice.Start(ctx, api.StartArgs{Cluster: "web", Count: o.vms, MemMB: 256}); err != nil || r.OK() != o.vms {
		t.Fatalf("starting alice's VMs: %v %+v", err, r)
	}
	s.before, _ = waitState(t, s.admin, 30*time.Second, allRunning(o.vms))
	s.base = s.status(true)
	return s
}

// yamuxLogin is a client written from the wire format alone: TLS, a
// yamux session, the call pipe, a login. The attacks below then open raw
// streams on it.
func (s *secSite) yamuxLogin(user string) *yamux.Session {
	s.t.Helper()
	cfg, err := transport.ClientTLS(filepath.Join(s.dir, "pki", "ca.crt"), "", "", "localhost")
	if err != nil {
		s.t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", s.addr, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	ys, err := yamux.Client(conn, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { ys.Close() })
	pipe, err := ys.OpenStream()
	if err != nil {
		s.t.Fatal(err)
	}
	pipe.SetDeadline(time.Now().Add(20 * time.Second))
	if err := transport.WriteFrame(pipe, []byte(`{"m":"_pipe"}`)); err != nil {
		s.t.Fatal(err)
	}
	if b, err := transport.ReadFrame(pipe, 1<<16); err != nil || string(b) != "usher-pipe/1" {
		s.t.Fatalf("pipe greeting: %q %v", b, err)
	}
	args := fmt.Sprintf(`{"user":%q,"password":%q}`, user, user+"-pw")
	req := binary.BigEndian.AppendUint64(nil, 1)
	req = binary.BigEndian.AppendUint32(req, 10000)
	req = append(req, byte(len("auth")))
	req = append(append(req, "auth"...), args...)
	if err := transport.WriteFrame(pipe, req); err != nil {
		s.t.Fatal(err)
	}
	b, err := transport.ReadFrame(pipe, 1<<20)
	if err != nil || len(b) < 9 || b[8] != 0 {
		s.t.Fatalf("login over the raw pipe: %q %v", b, err)
	}
	return ys
}

// status asks the controller for its status, with an invariant check and,
// with gc, a collection first.
func (s *secSite) status(gc bool) api.Status {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.admin.Status(ctx, api.StatusArgs{Check: true, GC: gc})
	if err != nil {
		s.t.Fatalf("status: %v", err)
	}
	if st.Invariants != "" {
		s.t.Fatalf("the controller's state is inconsistent: %s", st.Invariants)
	}
	return st
}

// healthy asserts the site still serves correct answers after an attack:
// alice's VMs are as before (none lost, moved or duplicated, and each on
// exactly one hypervisor), a new VM starts and is listed, the state's
// invariants hold, and the controller's goroutines and live heap come back
// to their baseline.
func (s *secSite) healthy() {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keys, _ := snapshot(t, s.admin)
	for _, k := range s.before {
		if !slices.Contains(keys, k) {
			t.Fatalf("VM %+v lost or moved: now %+v", k, keys)
		}
	}
	sims := s.simVMs("sim")
	for _, k := range s.before {
		if nodes := sims[k.Name]; len(nodes) != 1 || nodes[0] != k.LNM {
			t.Fatalf("%s is on hypervisors %v, want only %s", k.Name, nodes, k.LNM)
		}
	}
	r, err := s.alice.Start(ctx, api.StartArgs{Cluster: "after", Count: 1, MemMB: 128})
	if err != nil || r.OK() != 1 {
		t.Fatalf("a start after the attack: %v %+v", err, r)
	}
	lr, err := s.alice.List(ctx, api.ListArgs{Names: []string{r.Done[0].Name}})
	if err != nil || len(lr.VMs) != 1 {
		t.Fatalf("listing the new VM: %v %+v", err, lr)
	}
	if r, err := s.alice.OpOnNames(ctx, api.OpDestroy, []string{r.Done[0].Name}, nil); err != nil || r.OK() != 1 {
		t.Fatalf("destroying it: %v %+v", err, r)
	}
	waitfor.Error(t, 30*time.Second, "the controller to give back what the attack took", func() error {
		st := s.status(true)
		if st.Goroutines > s.base.Goroutines+15 || st.HeapBytes > s.base.HeapBytes+32<<20 {
			return fmt.Errorf("it holds %d goroutines (baseline %d) and %d MiB live heap (baseline %d MiB)",
				st.Goroutines, s.base.Goroutines, st.HeapBytes>>20, s.base.HeapBytes>>20)
		}
		return nil
	})
}

// rawSession dials the controller with the transport and logs in as user
// (none: "").
func (s *secSite) rawSession(ctx context.Context, user string) *transport.Session {
	s.t.Helper()
	cfg, err := transport.ClientTLS(filepath.Join(s.dir, "pki", "ca.crt"), "", "", "localhost")
	if err != nil {
		s.t.Fatal(err)
	}
	sess, err := transport.Dial(ctx, s.addr, cfg, transport.DefaultLimits(), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	sess.SetMux(transport.NewMux(nil))
	done := make(chan struct{})
	go func() { sess.Serve(ctx); close(done) }()
	s.t.Cleanup(func() { sess.Close(); <-done })
	if user != "" {
		if _, err := transport.Call(ctx, sess, api.MAuth, api.AuthArgs{User: user, Password: user + "-pw"}); err != nil {
			s.t.Fatal(err)
		}
	}
	return sess
}

// TestAttackBadArgumentsDoNotWedge: arguments a handler would have choked
// on (negative counts, in start and plan; huge counts and lists; a cluster
// name too long for VM names; a request id of megabytes; huge args) are
// refused naming the field, and the controller keeps serving.
func TestAttackBadArgumentsDoNotWedge(t *testing.T) {
	s := newSecSite(t, siteOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	long := strings.Repeat("c", 60)
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"negative count", func() error {
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{Cluster: "x", Count: -1})
			return err
		}, "count"},
		{"negative count in plan", func() error {
			_, err := client.Do(ctx, s.alice, api.MPlan, api.PlanArgs{Start: &api.StartArgs{Cluster: "x", Count: -5}})
			return err
		}, "count"},
		{"negative memory", func() error {
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{Cluster: "x", Count: 1, MemMB: -1})
			return err
		}, "mem_mb"},
		{"cluster too long for its VM names", func() error {
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{Cluster: long, Count: 1})
			return err
		}, "cluster"},
		{"request id of a megabyte", func() error {
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{ID: strings.Repeat("i", 1<<20), Cluster: "x", Count: 1})
			return err
		}, "id"},
		{"request id of forbidden characters", func() error {
			_, err := client.Do(ctx, s.alice, api.MOpOn, api.OpArgs{ID: "a b", Op: api.OpPause, VMs: []string{"web1.alice.usher.local"}})
			return err
		}, "id"},
		{"too many args", func() error {
			args := api.StringMap{}
			for i := range 100 {
				args[fmt.Sprint("k", i)] = "v"
			}
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{Cluster: "x", Count: 1, Args: args})
			return err
		}, "args"},
		{"arg value too long", func() error {
			_, err := client.Do(ctx, s.alice, api.MStart, api.StartArgs{Cluster: "x", Count: 1, Args: api.StringMap{"k": strings.Repeat("v", 5000)}})
			return err
		}, "args"},
	}
	for _, c := range cases {
		err := c.call()
		if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a bad_request naming %q", c.name, err, c.want)
		}
	}
	// The client refuses what the controller would, before sending.
	if _, err := s.alice.Start(ctx, api.StartArgs{Cluster: long, Count: 1}); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "cluster") {
		t.Errorf("client-side check of a long cluster name: %v", err)
	}
	if _, err := s.alice.Pause(ctx, "web[0-9223372036854775807]"); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a range of 2^63 names: %v", err)
	}
	// An LNM restarted now re-registers (its cached objects are bounded).
	s.kill9("node1")
	s.startLNM("node1")
	waitState(t, s.admin, 30*time.Second, allRunning(len(s.before)))
	s.healthy()
}

// TestAttackPolicyDecisionIsWhatRuns: a site policy turns destroy into
// pause; a user's destroy pauses the VM, and the result says so.
func TestAttackPolicyDecisionIsWhatRuns(t *testing.T) {
	s := newSecSite(t, siteOptions{scripts: map[string]string{"safety.lua": `
usher.on("op_request", function(req)
  if req.op == "destroy" and not req.user.admin then req.op = "pause" end
end)
`}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := s.before[0].Name
	r, err := s.alice.Destroy(ctx, name)
	if err != nil || r.OK() != 1 || r.Op != api.OpPause {
		t.Fatalf("destroy under the safety policy: %v %+v", err, r)
	}
	waitState(t, s.admin, 10*time.Second, func(_ []vmKey, lr *api.ListReply) bool {
		for _, v := range lr.VMs {
			if v.Name == name {
				return v.State == api.StatePaused
			}
		}
		return false
	})
	if _, err := s.alice.Resume(ctx, name); err != nil {
		t.Fatal(err)
	}
	waitState(t, s.admin, 10*time.Second, allRunning(len(s.before)))
	s.healthy()
}

// TestAttackProtocolFlagsInArgs: a migrate whose args carry the old
// protocol flag abort=1 migrates as asked: args never reach a node.
func TestAttackProtocolFlagsInArgs(t *testing.T) {
	s := newSecSite(t, siteOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var name, target string
	for _, k := range s.before {
		if k.LNM == "node1" {
			name, target = k.Name, "node2"
			break
		}
	}
	r, err := client.Do(ctx, s.alice, api.MMigrate, api.MigrateArgs{VMs: []string{name}, LNMs: []string{target}, Args: api.StringMap{"abort": "1"}})
	if err != nil || r.OK() != 1 {
		t.Fatalf("migrate with abort=1 in its args: %v %+v", err, r)
	}
	keys, _ := waitState(t, s.admin, 10*time.Second, allRunning(len(s.before)))
	sims := s.simVMs("sim")
	if nodes := sims[name]; len(nodes) != 1 || nodes[0] != target {
		t.Fatalf("after the migration %s is on hypervisors %v, want %s", name, nodes, target)
	}
	for i, k := range s.before {
		if k.Name == name {
			s.before[i].LNM = target
		}
	}
	_ = keys
	s.healthy()
}

// TestAttackNodeCertificate: the holder of a node certificate of the site
// (node3), registering after the controller's startup window, reports
// alice's VM that node1 holds and plants VMs for bob: the VM stays on
// node1 (a conflict, listed for admins), bob gets nothing (the planted
// guests are unmanaged).
func TestAttackNodeCertificate(t *testing.T) {
	s := newSecSite(t, siteOptions{grace: "1ms"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim := s.before[0]
	pki := filepath.Join(s.dir, "pki")
	s.run("ca", "issue", "--dir", pki, "--role", "lnm", "--name", "node3")
	cfg, err := transport.ClientTLS(filepath.Join(pki, "ca.crt"), filepath.Join(pki, "node3.crt"), filepath.Join(pki, "node3.key"), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := transport.Dial(ctx, s.addr, cfg, transport.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	guests := []api.Guest{
		{Name: victim.Name, State: api.StateRunning, MemMB: 256, VCPUs: 1},
		{Name: "planted1.bob.usher.local", State: api.StateRunning, MemMB: 64, VCPUs: 1,
			Cached: &api.VM{Name: "planted1.bob.usher.local", Short: "planted1", Owner: "bob", Cluster: "planted", Version: 9}},
	}
	m := transport.NewMux(nil)
	transport.Handle(m, api.LListGuests, func(context.Context, api.Empty) (api.GuestsReply, error) {
		return api.GuestsReply{Guests: guests}, nil
	})
	transport.Handle(m, api.LSync, func(context.Context, api.ReceiveArgs) (api.Empty, error) { return api.Empty{}, nil })
	transport.Handle(m, api.LReceive, func(context.Context, api.ReceiveArgs) (api.Empty, error) { return api.Empty{}, nil })
	rogue.SetMux(m)
	served := make(chan struct{})
	go func() { rogue.Serve(ctx); close(served) }()
	defer func() { rogue.Close(); <-served }()
	if _, err := transport.Call(ctx, rogue, api.MHello, api.Hello{Node: api.NodeInfo{Name: "node3", CPUs: 64, MemMB: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	st, err := transport.OpenStream(ctx, rogue, api.MReports, api.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Send("report", api.Report{Changes: []api.Guest{{Name: victim.Name, State: api.StateRunning},
		{Name: "planted2.bob.usher.local", State: api.StateRunning}}}); err != nil {
		t.Fatal(err)
	}
	// The rogue keeps its session alive as an LNM does.
	beats := make(chan struct{})
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-beats:
				return
			case <-tk.C:
				if st.Send("beat", struct{}{}) != nil {
					return
				}
			}
		}
	}()
	defer func() { close(beats); <-beating }()
	_, lr := waitState(t, s.admin, 10*time.Second, func(_ []vmKey, lr *api.ListReply) bool { return len(lr.Conflicts) == 1 && len(lr.Unmanaged) == 2 })

	if c := lr.Conflicts[0]; c.Name != victim.Name || c.LNM != "node3" {
		t.Fatalf("conflict %+v", c)
	}
	bob := s.client("bob")
	if n := bob.CachedCount(); n != 0 {
		t.Fatalf("bob owns %d VMs planted by a node", n)
	}
	if st := s.status(false); st.VMs != len(s.before) {
		t.Fatalf("%d VMs after the rogue node's reports, want %d", st.VMs, len(s.before))
	}
	rogue.Close()
	<-served
	s.healthy()
}

// TestAttackConnectionFlood: thousands of idle TCP connections and
// half-open TLS sessions from one address (127.0.0.2) do not delay a
// login or an LNM registration from another (127.0.0.1), and are closed.
func TestAttackConnectionFlood(t *testing.T) {
	s := newSecSite(t, siteOptions{controller: `login_timeout = "2s"`})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 2000 {
		c, err := d.DialContext(ctx, "tcp", s.addr)
		if err != nil {
			break // the kernel's backlog is full: the flood is on
		}
		conns = append(conns, c)
	}
	tlsCfg, err := transport.ClientTLS(filepath.Join(s.dir, "pki", "ca.crt"), "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // half-open: TLS done, never logging in
		if c, err := tls.DialWithDialer(&d, "tcp", s.addr, tlsCfg); err == nil {
			conns = append(conns, c)
		}
	}
	t0 := time.Now()
	other := s.client("alice")
	if took := time.Since(t0); took > 10*time.Second {
		t.Fatalf("a login from another address took %v during the flood", took)
	}
	_ = other
	s.kill9("node2")
	s.startLNM("node2")
	waitState(t, s.admin, 30*time.Second, allRunning(len(s.before)))
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	s.healthy()
}

// TestAttackPartialFrames: a logged-in user opens streams that declare
// frames of 32 MiB and send a few bytes: the controller allocates only
// what arrived, closes them at the frame timeout, and refuses a large
// frame before login outright.
func TestAttackPartialFrames(t *testing.T) {
	s := newSecSite(t, siteOptions{controller: `frame_timeout = "2s"`})
	cfg, err := transport.ClientTLS(filepath.Join(s.dir, "pki", "ca.crt"), "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	// Before login: a 1 MiB frame is refused at its header.
	conn, err := tls.Dial("tcp", s.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := yamux.Client(conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ys.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0, 0x10, 0, 0, '{'})
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	env, err := transport.ReadEnvelope(st, 1<<16)
	if err != nil || env.Error == nil || !strings.Contains(env.Error.Msg, "too large") {
		t.Fatalf("a large frame before login: %v %+v", err, env)
	}
	ys.Close()
	// After login: 200 streams each declaring 32 MiB and sending 10 bytes.
	ys = s.yamuxLogin("alice")
	var streams []net.Conn
	for range 200 {
		raw, err := ys.OpenStream()
		if err != nil {
			break
		}
		raw.Write(append([]byte{2, 0, 0, 0}, []byte(`{"m":"list"`)...))
		streams = append(streams, raw)
	}
	st2 := s.status(true)
	if grew := int64(st2.HeapBytes) - int64(s.base.HeapBytes); grew > 64<<20 {
		t.Fatalf("%d half-sent 32 MiB frames hold %d MiB of the controller's heap", len(streams), grew>>20)
	}
	for _, raw := range streams {
		raw.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 1)
		if _, err := raw.Read(buf); err == nil {
			continue
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("a half-sent frame was not cut off at the frame timeout")
		}
	}
	s.healthy()
}

// TestAttackLogins: failed logins back off per user and per address
// across reconnects (with the time to wait in the error); an unknown user
// costs the controller the same work as a wrong password; a password
// longer than bcrypt checks is refused as such.
func TestAttackLogins(t *testing.T) {
	// The users' passwords at bcrypt's default cost, so the work an
	// unknown user is spared would show against TLS and session set-up.
	s := newSecSite(t, siteOptions{cost: bcrypt.DefaultCost, controller: `login_free = 8
login_backoff = "3s"`})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	login := func(user, pw string) error {
		c, err := client.Connect(ctx, client.Config{Addr: s.addr, CAFile: filepath.Join(s.dir, "pki", "ca.crt"),
			ServerName: "localhost", User: user, Password: pw, NoReconnect: true})
		if err == nil {
			c.Close()
		}
		return err
	}
	// Timing: unknown users and wrong passwords take as long (both run
	// bcrypt). Medians of three tries each, within the free failures.
	median := func(user string) time.Duration {
		var ds []time.Duration
		for range 3 {
			t0 := time.Now()
			login(user, "wrong")
			ds = append(ds, time.Since(t0))
		}
		slices.Sort(ds)
		return ds[1]
	}
	wrong := median("bob")
	unknown := median("nosuchuser")
	if unknown*3 < wrong {
		t.Fatalf("an unknown user is refused in %v, a wrong password in %v: user enumeration", unknown, wrong)
	}
	// Past the free failures (here of the address, 127.0.0.1) each login
	// must wait, across reconnects, and is told how long.
	var e *api.Error
	for i := 0; ; i++ {
		err := login("bob", "wrong")
		if errors.As(err, &e) && e.RetryAfter() > 0 {
			break
		}
		if i == 10 {
			t.Fatalf("no backoff after %d failed logins: %v", 6+i, err)
		}
	}
	if e.Code != api.CodeUnauthorized || !strings.Contains(e.Msg, "try again in") {
		t.Fatalf("the backoff error: %+v", e)
	}
	if err := login("bob", "bob-pw"); err == nil || !strings.Contains(err.Error(), "try again in") {
		t.Fatalf("bob's right password during his backoff: %v", err)
	}
	if err := login("bob", strings.Repeat("p", 73)); err == nil || !strings.Contains(err.Error(), "72") {
		t.Fatalf("a 73-byte password: %v", err)
	}
	// The backoff passes: bob logs in with his password.
	waitfor.Error(t, 30*time.Second, "bob's backoff to pass", func() error { return login("bob", "bob-pw") })
	s.healthy()
}

// TestAttackStateFiles: a damaged known-LNM file and policy store do not
// keep the controller from starting: they are moved aside, and the LNMs
// come back on their own.
func TestAttackStateFiles(t *testing.T) {
	s := newSecSite(t, siteOptions{})
	s.kill9("controller")
	state := filepath.Join(s.dir, "ctl")
	for _, f := range []string{"known-lnms.json", "state-size.json", "policy-store.db", "node-modes.json", "reservations.json"} {
		if err := os.WriteFile(filepath.Join(state, f), []byte("{ damaged"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.startController()
	waitState(t, s.admin, 60*time.Second, allRunning(len(s.before)))
	for _, f := range []string{"known-lnms.json", "policy-store.db", "node-modes.json", "reservations.json"} {
		if aside, _ := filepath.Glob(filepath.Join(state, f+".damaged-*")); len(aside) != 1 {
			t.Errorf("%s was not moved aside: %v", f, aside)
		}
	}
	s.base = s.status(true)
	s.healthy()
}

// TestAttackHostileScripts: a careless or hostile policy author cannot
// take the controller's memory with one operation, fill the disk or slow
// the other scripts with the store, or read files the configuration does
// not name.
func TestAttackHostileScripts(t *testing.T) {
	s := newSecSite(t, siteOptions{policy: `mem_limit_mb = 32
store_max_mb = 1`, scripts: map[string]string{
		"bomb.lua": `usher.on("op_request", function(req)
  if req.args.bomb then
    local s = string.rep("x", 1000000)
    local t = s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s ..
              s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s ..
              s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s .. s
    return #t
  end
end)`,
		"hog.lua": `usher.on("op_request", function(req)
  if req.args.hog then
    local v = string.rep("y", 60000)
    for i = 1, 1000 do
      local ok, err = pcall(usher.store.set, "hog." .. i, v)
      if not ok then
        if not tostring(err):find("full") then error(err) end
        return
      end
    end
    error("the store never filled")
  end
end)`,
		"reader.lua": `usher.on("start_request", function(req)
  for _, p in ipairs({"/etc/shadow", "/proc/self/environ", "../../../../etc/passwd"}) do
    local users, err = usher.read_htpasswd(p)
    for _, vm in ipairs(req.vms) do vm.data[p] = users and "read" or "refused" end
  end
end)`,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := s.before[0].Name
	op := func(args api.StringMap) (*api.Result, error) {
		return s.alice.Op(ctx, api.OpArgs{Op: api.OpPause, VMs: []string{name}, Args: args})
	}
	if _, err := op(api.StringMap{"bomb": "1"}); !errors.Is(err, api.ErrRejected) || !strings.Contains(err.Error(), "memory limit") {
		t.Fatalf("a 60 MB concatenation in one instruction under a 32 MB limit: %v", err)
	}
	if st := s.status(true); st.HeapBytes > s.base.HeapBytes+32<<20 {
		t.Fatalf("after the bomb the controller's live heap is %d MiB (baseline %d MiB)", st.HeapBytes>>20, s.base.HeapBytes>>20)
	}
	if r, err := op(api.StringMap{"hog": "1"}); err != nil || r.OK() != 1 {
		t.Fatalf("the store hog (its sets refused once full): %v %+v", err, r)
	}
	// Other scripts' store writes fail with the same clear error, and
	// requests keep flowing (place_roundrobin writes the store on each).
	r, err := s.alice.Start(ctx, api.StartArgs{Cluster: "read", Count: 3})
	if err != nil || r.OK() != 3 {
		t.Fatalf("starts (place_roundrobin writes the store) with the hog's share full: %v %+v", err, r)
	}
	{
		for _, d := range r.Done {
			if d.OK && d.VM != nil {
				for _, p := range []string{"/etc/shadow", "/proc/self/environ", "../../../../etc/passwd"} {
					if d.VM.Data[p] != "refused" {
						t.Errorf("read_htpasswd(%s): %s", p, d.VM.Data[p])
					}
				}
				s.alice.OpOnNames(ctx, api.OpDestroy, []string{d.Name}, nil)
			}
		}
	}
	// The hog's request paused the VM (its handler returned normally).
	if r, err := s.alice.OpOnNames(ctx, api.OpResume, []string{name}, nil); err != nil || r.OK() != 1 {
		t.Fatalf("a resume after the attacks: %v %+v", err, r)
	}
	waitState(t, s.admin, 10*time.Second, allRunning(len(s.before)))
	s.healthy()
}

// TestAttackBusyMachine: with every core kept busy by other work, correct
// policies are not cut: their budget counts their own instructions, not
// the wall clock.
func TestAttackBusyMachine(t *testing.T) {
	s := newSecSite(t, siteOptions{policy: `budget = "30s"`})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 100000 {
					x += i
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	var names []string
	for i := range 40 {
		r, err := s.alice.Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("busy%d", i%4), Count: 1, MemMB: 64})
		if err != nil || r.OK() != 1 {
			t.Fatalf("start %d on a busy machine: %v %+v", i, err, r)
		}
		names = append(names, r.Done[0].Name)
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	if r, err := s.alice.OpOnNames(ctx, api.OpDestroy, names, nil); err != nil || r.OK() != len(names) {
		t.Fatalf("destroying them: %v %+v", err, r)
	}
	st, err := s.admin.Policy(ctx, api.PolicyArgs{Action: "status"})
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range st.Scripts {
		for _, h := range sc.Handlers {
			if h.Cut > 0 {
				t.Fatalf("%s %s was cut %d times on a busy machine", sc.Name, h.Name, h.Cut)
			}
		}
	}
	s.healthy()
}

// The HTTP API's boundaries: an oversized body is refused and the next
// call works; wrong passwords over HTTP count against the same backoff as
// the native link's (an attacker gets no second budget); a form POST from
// another site is refused; a tampered or revoked token is refused.
func TestAttackHTTPBoundaries(t *testing.T) {
	hs := startHTTPSite(t, "controller.login_backoff", "1m")
	big := `{"cluster":"x","count":1,"args":{"a":"` + strings.Repeat("x", 9<<20) + `"}}`
	req, _ := http.NewRequest("POST", hs.base+"/api/v1/vms", strings.NewReader(big))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("alice", "alice-pw")
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("a 9 MiB body: %d", resp.StatusCode)
	}
	var who api.AuthReply
	if st := hs.do(t, "alice", "GET", "/api/v1/whoami", nil, &who); st != 200 {
		t.Fatalf("after the big body: %d", st)
	}
	// Wrong passwords for bob over HTTP until the backoff answers.
	backoff := false
	for i := 0; i < 10 && !backoff; i++ {
		req, _ := http.NewRequest("GET", hs.base+"/api/v1/whoami", nil)
		req.SetBasicAuth("bob", "wrong")
		resp, err := hs.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		backoff = resp.Header.Get("Retry-After") != ""
	}
	if !backoff {
		t.Fatal("no login backoff over HTTP after 10 wrong passwords")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := hs.Client(ctx, "bob", "bob-pw"); err == nil {
		c.Close()
		t.Error("the native link let bob in during the backoff HTTP failures earned")
	} else if !strings.Contains(err.Error(), "too many failed logins") {
		t.Errorf("native login during the backoff: %v", err)
	}
	// Tokens: tampered and unknown ones.
	for _, tok := range []string{"usher_0000_x", "usher_" + strings.Repeat("a", 200), "Basic abc"} {
		req, _ := http.NewRequest("GET", hs.base+"/api/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hs.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("token %.20q: %d", tok, resp.StatusCode)
		}
	}
}
