package usher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/site"

	"path/filepath"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/transport"
)

func testSite(t *testing.T, lnms int, mut func(*site.Options)) (*site.Site, *coretest.Hooks) {
	t.Helper()
	h := coretest.New(map[string]string{"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}, "root")
	o := site.Options{Dir: t.TempDir(), LNMs: lnms, Hooks: h, Bind: func(c *core.Controller) { h.View = c.State() },
		ReportInterval: 100 * time.Millisecond, ScanInterval: 200 * time.Millisecond, KeepAlive: time.Second}
	if mut != nil {
		mut(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := site.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, h
}

// recorder collects a client's pushed events.
type recorder struct {
	mu  sync.Mutex
	evs []api.Event
	ch  chan struct{}
}

func record(c *client.Client) *recorder {
	r := &recorder{ch: make(chan struct{}, 1)}
	c.OnEvent(func(ev api.Event) {
		r.mu.Lock()
		r.evs = append(r.evs, ev)
		r.mu.Unlock()
		select {
		case r.ch <- struct{}{}:
		default:
		}
	})
	return r
}

// waitFor waits until some recorded event satisfies ok.
func (r *recorder) waitFor(t testing.TB, what string, ok func(api.Event) bool) api.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, ev := range r.evs {
			if ok(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("no pushed event: %s", what)
		}
	}
}

func (r *recorder) all() []api.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.Event(nil), r.evs...)
}

func simState(t *testing.T, s *site.Site, lnm, vm string) api.VMState {
	t.Helper()
	doms, err := s.Sim(lnm).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		if d.Name == vm {
			return d.State
		}
	}
	return "absent"
}

func TestEndToEnd(t *testing.T) {
	s, _ := testSite(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	rec := record(alice)

	// start 10 VMs in cluster sneetch on three LNMs
	res, err := alice.Start(ctx, api.StartArgs{Cluster: "sneetch", Count: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() != 10 || res.Requested != 10 {
		t.Fatalf("started %d of %d: %+v", res.OK(), res.Requested, res)
	}
	nodes := map[string]int{}
	for _, d := range res.Done {
		nodes[d.LNM]++
		if st := simState(t, s, d.LNM, d.Name); st != api.StateRunning {
			t.Fatalf("%s on %s is %s in the hypervisor", d.Name, d.LNM, st)
		}
		if !strings.HasSuffix(d.Name, ".alice.usher.local") || d.VM.Data["registered"] != "yes" {
			t.Fatalf("bad VM object %+v", d.VM)
		}
	}
	if len(nodes) != 3 {
		t.Fatalf("placement used %d nodes: %v", len(nodes), nodes)
	}
	for i := 1; i <= 10; i++ {
		name := fmt.Sprintf("sneetch%d.alice.usher.local", i)
		rec.waitFor(t, "start_complete of "+name, func(ev api.Event) bool {
			return ev.Type == api.EvStartComplete && ev.OK && ev.VM.Name == name
		})
	}
	if got := len(alice.VMs()); got != 10 {
		t.Fatalf("client cache holds %d VMs", got)
	}

	// every Table 3 operation, checked in the hypervisor and in pushed events
	steps := []struct {
		op   api.Op
		set  string
		want api.VMState
	}{
		{api.OpPause, "sneetch[1-3]", api.StatePaused},
		{api.OpResume, "sneetch[1-3]", api.StateRunning},
		{api.OpShutdown, "sneetch4", api.StateShutoff},
		{api.OpCycle, "sneetch4", api.StateRunning},
		{api.OpReboot, "/sneetch[56]/", api.StateRunning},
		{api.OpHibernate, "sneetch7,sneetch8", api.StateHibernated},
		{api.OpRestore, "sneetch7 sneetch8", api.StateRunning},
		{api.OpDestroy, "sneetch10", "absent"},
	}
	for _, st := range steps {
		names, err := alice.Expand(st.set)
		if err != nil {
			t.Fatal(err)
		}
		r, err := alice.OpOn(ctx, st.op, st.set, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", st.op, st.set, err)
		}
		if r.OK() != len(names) {
			t.Fatalf("%s %s: %d of %d ok: %+v", st.op, st.set, r.OK(), len(names), r.Done)
		}
		for _, d := range r.Done {
			if got := simState(t, s, d.LNM, d.Name); got != st.want {
				t.Fatalf("%s: %s is %s in the hypervisor, want %s", st.op, d.Name, got, st.want)
			}
			rec.waitFor(t, fmt.Sprintf("op_complete %s %s", st.op, d.Name), func(ev api.Event) bool {
				return ev.Type == api.EvOpComplete && ev.OK && ev.VM.Name == d.Name && ev.Detail["op"] == string(st.op)
			})
		}
	}
	rec.waitFor(t, "paused state pushed", func(ev api.Event) bool {
		return ev.Type == api.EvStateChanged && ev.VM.State == api.StatePaused && ev.VM.Short == "sneetch1"
	})
	if _, ok := alice.VM("sneetch10.alice.usher.local"); ok {
		t.Fatal("destroyed VM still cached")
	}

	// migrate one VM to another node
	vm, _ := alice.VM("sneetch1.alice.usher.local")
	target := "node1"
	if vm.LNM == target {
		target = "node2"
	}
	r, err := alice.Migrate(ctx, "sneetch1", target)
	if err != nil || r.OK() != 1 {
		t.Fatalf("migrate: %v %+v", err, r)
	}
	if got := simState(t, s, target, vm.Name); got != api.StateRunning {
		t.Fatalf("migrated VM is %s on %s", got, target)
	}
	if got := simState(t, s, vm.LNM, vm.Name); got != "absent" {
		t.Fatalf("migrated VM still %s on source %s", got, vm.LNM)
	}
	rec.waitFor(t, "migration pushed", func(ev api.Event) bool {
		return ev.Type == api.EvMigrateComplete && ev.OK && ev.VM.Name == vm.Name && ev.VM.LNM == target
	})
	if v, _ := alice.VM(vm.Name); v.LNM != target {
		t.Fatalf("cache says %s is on %s", vm.Name, v.LNM)
	}

	// list with status: usage averages arrive from the LNMs' reports
	waitfor.Error(t, 10*time.Second, "usage figures for every VM", func() error {
		lr, err := alice.List(ctx, api.ListArgs{Status: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(lr.VMs) != 9 {
			t.Fatalf("list: %d VMs", len(lr.VMs))
		}
		withUsage := 0
		for _, v := range lr.VMs {
			if v.Usage != nil && v.Usage.MemBytes.M1 > 0 {
				withUsage++
			}
		}
		if withUsage != 9 {
			return fmt.Errorf("only %d VMs have them", withUsage)
		}
		return nil
	})
	lnms, err := alice.ListLNMs(ctx, nil, true)
	if err != nil || len(lnms) != 3 {
		t.Fatalf("list_lnms: %v %d", err, len(lnms))
	}
	for _, l := range lnms {
		if l.State != api.LNMConnected || l.Info.MemMB == 0 || l.Status.ReportedAt == 0 {
			t.Fatalf("LNM record incomplete: %+v", l)
		}
	}

	// a second user neither sees nor touches alice's VMs
	bob, err := s.Client(ctx, "bob", "bob-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	bobRec := record(bob)
	if n := len(bob.VMs()); n != 0 {
		t.Fatalf("bob sees %d VMs", n)
	}
	if _, err := bob.Pause(ctx, "sneetch2"); err == nil || !strings.Contains(err.Error(), "no such VM") {
		t.Fatalf("client-side check: %v", err)
	}
	br, err := bob.OpOnNames(ctx, api.OpDestroy, []string{"sneetch2.alice.usher.local"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if br.OK() != 0 || len(br.Dropped) != 1 {
		t.Fatalf("bob destroyed alice's VM: %+v", br)
	}
	if got := simState(t, s, nodeOf(t, alice, "sneetch2.alice.usher.local"), "sneetch2.alice.usher.local"); got != api.StateRunning {
		t.Fatalf("alice's VM is %s after bob's attempt", got)
	}
	if _, err := bob.List(ctx, api.ListArgs{All: true}); err == nil {
		t.Fatal("bob listed everyone's VMs")
	}
	if lr, _ := bob.List(ctx, api.ListArgs{}); len(lr.VMs) != 0 {
		t.Fatalf("bob lists %d VMs", len(lr.VMs))
	}
	// alice acts once more; bob must receive nothing of it
	if _, err := alice.Pause(ctx, "sneetch2"); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "pause of sneetch2", func(ev api.Event) bool {
		return ev.Type == api.EvOpComplete && ev.VM.Short == "sneetch2"
	})
	for _, ev := range bobRec.all() {
		if ev.VM != nil && ev.VM.Owner == "alice" {
			t.Fatalf("bob received alice's event %+v", ev)
		}
	}
	// the admin sees everything
	root, err := s.Client(ctx, "root", "root-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if lr, err := root.List(ctx, api.ListArgs{All: true}); err != nil || len(lr.VMs) != 9 {
		t.Fatalf("admin list: %v", err)
	}
}

func nodeOf(t *testing.T, c *client.Client, name string) string {
	v, ok := c.VM(name)
	if !ok {
		t.Fatalf("%s not cached", name)
	}
	return v.LNM
}

func TestBadRequests(t *testing.T) {
	s, _ := testSite(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client(ctx, "alice", "wrong"); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := s.Client(ctx, "alice", ""); err == nil {
		t.Fatal("empty password accepted")
	}
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"unknown op", func() error {
			_, err := client.Do(ctx, alice, api.MOpOn, api.OpArgs{Op: "explode", VMs: []string{"x"}})
			return err
		}, "unknown operation"},
		{"empty list", func() error {
			_, err := client.Do(ctx, alice, api.MOpOn, api.OpArgs{Op: api.OpPause})
			return err
		}, "empty VM list"},
		{"huge list", func() error {
			vms := make([]string, 200001)
			for i := range vms {
				vms[i] = fmt.Sprintf("v%d.alice.usher.local", i)
			}
			_, err := client.Do(ctx, alice, api.MOpOn, api.OpArgs{Op: api.OpPause, VMs: vms})
			return err
		}, "limit"},
		{"huge start", func() error {
			_, err := client.Do(ctx, alice, api.MStart, api.StartArgs{Cluster: "x", Count: 1 << 30})
			return err
		}, "count"},
		{"bad cluster", func() error {
			_, err := client.Do(ctx, alice, api.MStart, api.StartArgs{Cluster: "../etc", Count: 1})
			return err
		}, "cluster"},
		{"unknown method", func() error {
			_, err := client.Do(ctx, alice, api.Method[api.Empty, api.Empty]{Name: "format_disk", Access: api.Authenticated}, api.Empty{})
			return err
		}, "unknown method"},
		{"malformed args", func() error {
			_, err := client.Do(ctx, alice, api.Method[[]int, api.Empty]{Name: "start", Access: api.Authenticated}, []int{1, 2})
			return err
		}, "malformed"},
		{"unknown LNM suggestion", func() error {
			r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 1, LNMs: []string{"nowhere"}})
			if err != nil {
				return err
			}
			return fmt.Errorf("%s", r.Done[0].Error)
		}, "not connected"},
	}
	for _, c := range cases {
		err := c.call()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", c.name, err, c.want)
		}
	}
	r, err := alice.OpOnNames(ctx, api.OpPause, []string{"ghost.alice.usher.local"}, nil)
	if err != nil || len(r.Dropped) != 1 || r.Dropped[0].Reason != "no such VM" {
		t.Fatalf("unknown VM: %v %+v", err, r)
	}
	// the controller keeps serving
	if r, err := alice.Start(ctx, api.StartArgs{Cluster: "ok", Count: 2}); err != nil || r.OK() != 2 {
		t.Fatalf("after bad input: %v %+v", err, r)
	}
}

func TestQuotaTrimReportsWhatWasDone(t *testing.T) {
	s, h := testSite(t, 2, nil)
	h.MaxVMs = 3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	r, err := alice.Start(ctx, api.StartArgs{Cluster: "web", Count: 5})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requested != 5 || r.OK() != 3 || len(r.Dropped) != 2 || !strings.Contains(r.Dropped[0].Reason, "quota") {
		t.Fatalf("quota result: %+v", r)
	}
}

func TestLNMLossAndReturn(t *testing.T) {
	s, _ := testSite(t, 2, func(o *site.Options) { o.SimPersist = true })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	rec := record(alice)
	r, err := alice.Start(ctx, api.StartArgs{Cluster: "db", Count: 4, LNMs: []string{"node2"}})
	if err != nil || r.OK() != 4 {
		t.Fatalf("%v %+v", err, r)
	}
	s.StopLNM("node2")
	for _, d := range r.Done {
		rec.waitFor(t, "lost "+d.Name, func(ev api.Event) bool { return ev.Type == api.EvVMLost && ev.VM.Name == d.Name })
	}
	lr, _ := alice.List(ctx, api.ListArgs{Lists: true})
	if len(lr.Lost) != 4 {
		t.Fatalf("lost list has %d", len(lr.Lost))
	}
	// Behind Usher's back one VM vanishes while the LNM is down.
	gone := r.Done[0].Name
	if err := injectVanish(s, "node2", gone); err != nil {
		t.Fatal(err)
	}
	if err := s.AddLNM("node2"); err != nil {
		t.Fatal(err)
	}
	for _, d := range r.Done[1:] {
		rec.waitFor(t, "back "+d.Name, func(ev api.Event) bool {
			return ev.Type == api.EvStateChanged && ev.VM.Name == d.Name && ev.VM.State == api.StateRunning
		})
	}
	rec.waitFor(t, "missing "+gone, func(ev api.Event) bool { return ev.Type == api.EvVMMissing && ev.VM.Name == gone })
	// The registration's full sync leaves the returned LNM caching the
	// controller's objects, and only those.
	var names []string
	for _, d := range r.Done[1:] {
		names = append(names, d.Name)
	}
	waitCacheMatches(t, s, "node2", names)
}

// waitCacheMatches waits until LNM lnm caches exactly the named VMs, each
// in the controller's state, reason and version.
func waitCacheMatches(t *testing.T, s *site.Site, lnm string, names []string) {
	t.Helper()
	waitfor.Error(t, 10*time.Second, "LNM "+lnm+"'s cache to match the controller", func() error {
		why := ""
		cached := map[string]*api.VM{}
		for _, v := range s.LNM(lnm).CachedVMs() {
			cached[v.Name] = v
		}
		if len(cached) != len(names) {
			why = fmt.Sprintf("%d objects cached, want %d", len(cached), len(names))
		}
		for _, n := range names {
			ours, ok := s.Controller.State().VM(n)
			c := cached[n]
			if !ok || c == nil || c.State != ours.State || c.Reason != ours.Reason || c.Version != ours.Version {
				why = fmt.Sprintf("%s: cached %+v, controller %+v", n, c, ours)
			}
		}
		if why != "" {
			return errors.New(why)
		}
		return nil
	})
}

func injectVanish(s *site.Site, node, vm string) error {
	return simInject(s.Opts.Dir, node, "vanish", vm)
}

func simInject(dir, node, action, vm string) error {
	return sim.Inject(filepath.Join(dir, "sim", node+".json"), action, vm)
}

// feedSite is a two-LNM site whose controller queues at most buffer events
// per client feed, with room for a thousand VMs, and a minute to run in.
func feedSite(t *testing.T, buffer int) (*site.Site, context.Context) {
	s, _ := testSite(t, 2, func(o *site.Options) {
		o.Core = &core.Config{EventBuffer: buffer, OwnerOnly: true}
		o.SimCPUs, o.SimMemMB = 100000, 1<<30
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return s, ctx
}

// A client that opens its event stream and never reads it is cut off when
// its queue overflows; the controller keeps serving everyone else.
func TestStuckEventReaderIsCutOff(t *testing.T) {
	s, ctx := feedSite(t, 64)
	cfg, err := transport.ClientTLS(s.CAFile, "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := transport.Dial(ctx, s.Addr, cfg, transport.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetMux(transport.NewMux(nil))
	go raw.Serve(ctx)
	if _, err := transport.Call(ctx, raw, api.MAuth, api.AuthArgs{User: "alice", Password: "alice-pw"}); err != nil {
		t.Fatal(err)
	}
	stuck, err := transport.OpenStream(ctx, raw, api.MEvents, api.EventsArgs{})
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	// the feed is live once "ready" arrives; after that it is never read
	if env, err := stuck.Recv(10 * time.Second); err != nil || env.Method != "ready" {
		t.Fatalf("event stream: %v %+v", err, env)
	}
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	baseline := s.Controller.Subscribers()
	if baseline != 2 {
		t.Fatalf("%d feeds, want the stuck one and alice's", baseline)
	}
	for i := 0; i < 40; i++ {
		r, err := alice.Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("flood%d", i), Count: 25})
		if err != nil || r.OK() != 25 {
			t.Fatalf("start while a reader is stuck: %v %+v", err, r)
		}
	}
	waitfor.Error(t, 20*time.Second, "the stuck subscriber to be cut off", func() error {
		if n := s.Controller.Subscribers(); n >= baseline {
			return fmt.Errorf("%d feeds", n)
		}
		return nil
	})
	// the reading client's cache catches up through its own feed
	waitCacheSize(t, alice, 1000)
}

// waitCacheSize waits until c's cache holds n VMs.
func waitCacheSize(t *testing.T, c *client.Client, n int) {
	t.Helper()
	waitfor.Error(t, 30*time.Second, fmt.Sprintf("the client's cache to hold %d VMs", n), func() error {
		if got := len(c.VMs()); got != n {
			return fmt.Errorf("it holds %d", got)
		}
		return nil
	})
}

// TestStartLeavesLNMCacheCurrent: after a start the LNM's cached VM object
// already carries the controller's update (state, reason, version), which
// it applied itself, so no acknowledgement has to travel back; the object
// the controller holds and the one the LNM would hand a recovering
// controller are the same.
func TestStartLeavesLNMCacheCurrent(t *testing.T) {
	s, _ := testSite(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	res, err := alice.Start(ctx, api.StartArgs{Cluster: "acked", Count: 6})
	if err != nil || res.OK() != 6 {
		t.Fatalf("start: %v %+v", err, res)
	}
	for _, d := range res.Done {
		ours, ok := s.Controller.State().VM(d.Name)
		if !ok {
			t.Fatalf("%s not in the controller's state", d.Name)
		}
		var cached *api.VM
		for _, v := range s.LNM(d.LNM).CachedVMs() {
			if v.Name == d.Name {
				cached = v
			}
		}
		if cached == nil {
			t.Fatalf("%s not cached on %s", d.Name, d.LNM)
		}
		if cached.State != ours.State || cached.Reason != ours.Reason || cached.Version != ours.Version ||
			ours.State != api.StateRunning || ours.Reason != api.ReasonStarted {
			t.Fatalf("%s: LNM caches %s/%q v%d, controller holds %s/%q v%d", d.Name,
				cached.State, cached.Reason, cached.Version, ours.State, ours.Reason, ours.Version)
		}
	}
}

// TestLaggingClientResyncsInSession: a client whose feed the controller
// cuts off for falling behind reloads its cache on the same session (no
// disconnect, no new handshake or authentication), and nothing is lost:
// the VMs started while it lagged are all in its cache, and later events
// still arrive.
func TestLaggingClientResyncsInSession(t *testing.T) {
	s, ctx := feedSite(t, 16)
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	var connMu sync.Mutex
	var conns []client.ConnState
	alice.OnConn(func(st client.ConnState, _ error) {
		connMu.Lock()
		conns = append(conns, st)
		connMu.Unlock()
	})
	// alice's event goroutine stalls in a callback until released: her
	// feed backs up at the controller while another session starts VMs.
	gate, stalled := make(chan struct{}), make(chan struct{}, 1)
	var once, opened sync.Once
	release := func() { opened.Do(func() { close(gate) }) }
	defer release() // on any failure too: alice.Close waits for her event goroutine
	alice.OnEvent(func(api.Event) {
		once.Do(func() {
			stalled <- struct{}{}
			<-gate
		})
	})
	other, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// Start VMs 25 at a time until the controller cuts alice's lagging
	// feed off (a buffer of 16 events; the stream's flow-control window
	// takes some hundreds before the controller's queue grows), leaving
	// only other's feed.
	started := 0
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; s.Controller.Subscribers() > 1; i++ {
		if i == 200 || time.Now().After(deadline) {
			t.Fatalf("the lagging feed was not cut off after %d VMs (%d feeds)", started, s.Controller.Subscribers())
		}
		r, err := other.Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("lag%d", i), Count: 25})
		if err != nil || r.OK() != 25 {
			t.Fatalf("start: %v %+v", err, r)
		}
		started += 25
		if i == 0 {
			select {
			case <-stalled:
			case <-ctx.Done():
				t.Fatal("alice's feed never delivered an event")
			}
		}
	}
	t.Logf("alice's feed was cut off after %d VMs", started)
	release()
	waitCacheSize(t, alice, started)
	// the new feed is live: a later start shows up without a reload
	if r, err := other.Start(ctx, api.StartArgs{Cluster: "after", Count: 1}); err != nil || r.OK() != 1 {
		t.Fatalf("start after resync: %v %+v", err, r)
	}
	waitCacheSize(t, alice, started+1)
	if !alice.Connected() {
		t.Fatal("alice is not connected after the resync")
	}
	connMu.Lock()
	defer connMu.Unlock()
	if len(conns) != 0 {
		t.Fatalf("the resync went through connection changes %v; want none (same session)", conns)
	}
}

// TestClientLoadsItsCacheInPages: a client loads its cache a page at a
// time (one frame each: a user's quarter of a million VMs is more than a
// frame may carry) and ends with every VM; List of everything pages too.
func TestClientLoadsItsCacheInPages(t *testing.T) {
	s, ctx := feedSite(t, 4096)
	starter, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer starter.Close()
	if r, err := starter.Start(ctx, api.StartArgs{Cluster: "web", Count: 7}); err != nil || r.OK() != 7 {
		t.Fatalf("%v %+v", err, r)
	}
	paged, err := client.Connect(ctx, client.Config{Addr: s.Addr, CAFile: s.CAFile, ServerName: "localhost",
		User: "alice", Password: "alice-pw", ListPage: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer paged.Close()
	got, want := paged.VMs(), starter.VMs()
	if len(got) != 7 || len(want) != 7 {
		t.Fatalf("paged client holds %d VMs, the other %d; want 7", len(got), len(want))
	}
	for i := range got {
		if got[i].Name != want[i].Name || got[i].State != want[i].State {
			t.Fatalf("VM %d: %s %s, want %s %s", i, got[i].Name, got[i].State, want[i].Name, want[i].State)
		}
	}
	// An explicit list of everything is paged the same way and comes back
	// in the order of one unpaged reply.
	whole, err := starter.List(ctx, api.ListArgs{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	pages, err := paged.List(ctx, api.ListArgs{})
	if err != nil {
		t.Fatal(err)
	}
	api.SortVMs(whole.VMs)
	if len(pages.VMs) != 7 || pages.More {
		t.Fatalf("paged list: %d VMs, more %v", len(pages.VMs), pages.More)
	}
	for i := range pages.VMs {
		if pages.VMs[i].Name != whole.VMs[i].Name {
			t.Fatalf("paged list position %d: %s, want %s", i, pages.VMs[i].Name, whole.VMs[i].Name)
		}
	}
}
