package core

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
)

// noHooks: events go nowhere; nothing else is called on registration.
type noHooks struct{ Hooks }

func (noHooks) Notify(api.Event) {}

// TestRegistrationSyncSendsOnlyWhatDiffers: when an LNM registers with
// cached objects (after a controller restart), the full sync carries only a
// state update for a VM whose cached object agrees with the adopted one in
// everything else, and the whole object for one that differs.
func TestRegistrationSyncSendsOnlyWhatDiffers(t *testing.T) {
	c := New(Config{Domain: "usher.test"}, noHooks{})
	created := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	cached := func(short string) *api.VM {
		return &api.VM{Name: api.FullName(short, "alice", "usher.test"), Short: short, Owner: "alice", Cluster: "web", LNM: "n1",
			State: api.StateRunning, Reason: api.ReasonStarted, MemMB: 512, VCPUs: 1, Data: map[string]string{"ip": "10.0.0.7"},
			Version: 2, Created: created, Request: "r1"}
	}
	same, changed := cached("web1"), cached("web2")
	domains := []api.Guest{
		{Name: same.Name, State: api.StateRunning, MemMB: 512, VCPUs: 1, Cached: same},
		// The node now runs web2 with more memory than its cached object says.
		{Name: changed.Name, State: api.StateRunning, MemMB: 1024, VCPUs: 1, Cached: changed},
	}
	link := apitest.NewNode("n1")
	c.ExpectLNMs([]api.NodeInfo{{Name: "n1"}}) // a restart: its VMs are adopted
	if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n1", CPUs: 4, MemMB: 8192}}, link, domains); err != nil {
		t.Fatal(err)
	}
	var a api.ReceiveArgs
	select {
	case a = <-link.Synced:
	case <-time.After(10 * time.Second):
		t.Fatal("no sync sent to the LNM")
	}
	if len(a.States) != 1 || a.States[0].Name != same.Name || len(a.VMs) != 1 || a.VMs[0].Name != changed.Name {
		t.Fatalf("sync carries states %+v and objects %+v; want a state update for web1 and the object of web2", a.States, a.VMs)
	}
	ours, _ := c.State().VM(same.Name)
	u := a.States[0]
	if u.State != ours.State || u.Reason != ours.Reason || u.Version != ours.Version || ours.Version <= same.Version {
		t.Fatalf("state update %+v for controller object %+v (cached version %d)", u, ours, same.Version)
	}
	if a.VMs[0].MemMB != 1024 {
		t.Fatalf("object sent for web2: %+v", a.VMs[0])
	}
}

// TestListOrderAndSeq: list returns VMs by owner, cluster, then natural
// index (web2 before web10), and its Seq is the number of the last event
// published before the list was taken.
func TestListOrderAndSeq(t *testing.T) {
	c := New(Config{Domain: "usher.test", Adopt: AdoptAlways}, allowHooks{})
	var domains []api.Guest
	for _, v := range []struct{ short, owner string }{
		{"web10", "alice"}, {"web2", "alice"}, {"db1", "alice"}, {"web1", "alice"}, {"webx", "alice"}, {"web3", "bob"},
	} {
		domains = append(domains, api.Guest{Name: api.FullName(v.short, v.owner, "usher.test"), State: api.StateRunning, MemMB: 64, VCPUs: 1})
	}
	if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n1", CPUs: 4, MemMB: 8192}}, apitest.NewNode("n1"), domains); err != nil {
		t.Fatal(err)
	}
	rep, err := c.List(context.Background(), api.Identity{User: "root", Admin: true}, api.ListArgs{All: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range rep.VMs {
		got = append(got, v.Short+"."+v.Owner)
	}
	want := []string{"db1.alice", "web1.alice", "web2.alice", "web10.alice", "webx.alice", "web3.bob"}
	if len(got) != len(want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("listed %v, want %v", got, want)
		}
	}
	// one lnm_connected event and one adoption event per VM came first
	if rep.Seq != uint64(1+len(domains)) {
		t.Fatalf("list seq %d, want %d (the events published before it)", rep.Seq, 1+len(domains))
	}
}

// allowHooks authorizes everything; events go nowhere.
type allowHooks struct{ noHooks }

func (allowHooks) Authorize(context.Context, *Request, *Decision) error { return nil }

// TestSubscriptionQueue: a feed queues what waits (Ready signals it, Take
// hands it out oldest first, in batches), filters by user, and when more
// than EventBuffer events wait it ends as overflowed: what was queued is
// still handed out, nothing after it.
func TestSubscriptionQueue(t *testing.T) {
	c := New(Config{Domain: "usher.test", EventBuffer: 3}, allowHooks{})
	sub, err := c.Subscribe(api.Identity{User: "alice"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	ev := func(user string) api.Event { return api.Event{Type: api.EvStateChanged, User: user} }
	c.emit(ev("alice"), ev("bob"), ev("alice"), ev("alice"))
	select {
	case <-sub.Ready():
	default:
		t.Fatal("Ready not signalled with events waiting")
	}
	a, open := sub.Take(2)
	b, open2 := sub.Take(10)
	if len(a) != 2 || len(b) != 1 || !open || !open2 || a[0].Seq >= a[1].Seq || a[1].Seq >= b[0].Seq {
		t.Fatalf("took %+v then %+v (open %v %v); want alice's three events in order, 2 then 1", a, b, open, open2)
	}
	if evs, open := sub.Take(10); len(evs) != 0 || !open {
		t.Fatalf("empty queue: took %d, open %v", len(evs), open)
	}
	c.emit(ev("alice"), ev("alice"), ev("alice"), ev("alice"), ev("alice")) // more than fits
	<-sub.Ready()
	if evs, open := sub.Take(10); len(evs) != 3 || open || !sub.Overflowed() {
		t.Fatalf("after overflow: took %d, open %v, overflowed %v; want the 3 queued, closed, overflowed", len(evs), open, sub.Overflowed())
	}
}

// notifyHooks records what plugins are told.
type notifyHooks struct {
	allowHooks
	got chan api.Event
}

func (h notifyHooks) Notify(ev api.Event) { h.got <- ev }

// attachAlice returns a function registering an LNM that runs running
// VMs of alice's with the given short names.
func attachAlice(t *testing.T, c *Controller) func(lnm string, vms ...string) {
	return func(lnm string, vms ...string) {
		t.Helper()
		var doms []api.Guest
		for _, v := range vms {
			doms = append(doms, api.Guest{Name: v + ".alice.usher.test", State: api.StateRunning})
		}
		if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: lnm, CPUs: 8, MemMB: 8192}}, apitest.NewNode(lnm), doms); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRecoveryFeedsOneReload: while a restarted controller waits for known
// LNMs, the VMs it adopts go to plugins but not to clients' feeds; when
// the last one is back every feed, admin or not, gets one recovered event
// with the counts (clients reload then); after that adoptions are
// published again.
func TestRecoveryFeedsOneReload(t *testing.T) {
	h := notifyHooks{got: make(chan api.Event, 100)}
	c := New(Config{Domain: "usher.test", Adopt: AdoptAlways}, h)
	c.ExpectLNMs([]api.NodeInfo{{Name: "n1"}, {Name: "n2"}})
	alice, _ := c.Subscribe(api.Identity{User: "alice"}, "", false)
	root, _ := c.Subscribe(api.Identity{User: "root", Admin: true}, "", true)
	attach := attachAlice(t, c)
	types := func(s *Subscription) (out []string) {
		evs, _ := s.Take(100)
		for _, ev := range evs {
			out = append(out, ev.Type)
		}
		return out
	}
	attach("n1", "web1", "web2")
	if got := types(alice); len(got) != 0 {
		t.Fatalf("alice's feed during recovery: %v, want nothing", got)
	}
	if got := types(root); len(got) != 1 || got[0] != api.EvLNMConnected {
		t.Fatalf("admin's watch during recovery: %v, want only lnm_connected", got)
	}
	adopted := 0
	for len(h.got) > 0 {
		if ev := <-h.got; ev.Type == api.EvStateChanged && ev.Detail["adopted"] == "true" {
			adopted++
		}
	}
	if adopted != 2 {
		t.Fatalf("plugins were told of %d adoptions, want 2", adopted)
	}
	attach("n2", "db1")
	evs, _ := alice.Take(100)
	if len(evs) != 1 || evs[0].Type != api.EvRecovered || evs[0].Detail["lnms"] != "2" || evs[0].Detail["vms"] != "3" {
		t.Fatalf("alice's feed when the state is whole: %+v, want one recovered event (2 LNMs, 3 VMs)", evs)
	}
	if got := types(root); len(got) != 2 || got[0] != api.EvLNMConnected || got[1] != api.EvRecovered {
		t.Fatalf("admin's watch when the state is whole: %v", got)
	}
	select {
	case <-c.Recovered():
	default:
		t.Fatal("still recovering with every known LNM back")
	}
	attach("n3", "web3")
	if evs, _ := alice.Take(100); len(evs) != 1 || evs[0].Type != api.EvStateChanged || evs[0].Detail["adopted"] != "true" {
		t.Fatalf("alice's feed after recovery: %+v, want the adoption", evs)
	}
}

// wantingHooks handle only the events in wants (core.EventWanter).
type wantingHooks struct {
	notifyHooks
	wants map[string]bool
}

func (h wantingHooks) Wants(event string) bool { return h.wants[event] }

// TestQuietAdoptionsOnlyWhenWanted: while a restarted controller waits for
// its LNMs, adoptions are for plugins alone; when the hooks say no plugin
// handles state_changed none is built, yet the state, the recovered event
// and later (published) adoptions are as before.
func TestQuietAdoptionsOnlyWhenWanted(t *testing.T) {
	h := wantingHooks{notifyHooks: notifyHooks{got: make(chan api.Event, 100)}, wants: map[string]bool{api.EvLNMConnected: true}}
	c := New(Config{Domain: "usher.test", Adopt: AdoptAlways}, h)
	c.ExpectLNMs([]api.NodeInfo{{Name: "n1"}, {Name: "n2"}})
	alice, _ := c.Subscribe(api.Identity{User: "alice"}, "", false)
	attach := attachAlice(t, c)
	drain := func() (out []string) {
		for len(h.got) > 0 {
			out = append(out, (<-h.got).Type)
		}
		return out
	}
	attach("n1", "web1", "web2")
	if got := drain(); len(got) != 1 || got[0] != api.EvLNMConnected {
		t.Fatalf("plugins during recovery were told %v, want only lnm_connected", got)
	}
	attach("n2", "db1")
	if n := c.State().Counts().VMs; n != 3 {
		t.Fatalf("%d VMs after recovery, want 3", n)
	}
	if evs, _ := alice.Take(100); len(evs) != 1 || evs[0].Type != api.EvRecovered || evs[0].Detail["vms"] != "3" {
		t.Fatalf("alice's feed when the state is whole: %+v, want one recovered event with 3 VMs", evs)
	}
	drain()
	attach("n3", "web3")
	if evs, _ := alice.Take(100); len(evs) != 1 || evs[0].Type != api.EvStateChanged || evs[0].Detail["adopted"] != "true" {
		t.Fatalf("alice's feed after recovery: %+v, want the adoption", evs)
	}
	if got := drain(); len(got) != 2 || got[0] != api.EvLNMConnected || got[1] != api.EvStateChanged {
		t.Fatalf("plugins after recovery were told %v, want lnm_connected and the adoption (Notify filters, not the core)", got)
	}
}

// TestListPages: with a limit, list hands out the caller's VMs in name
// order, a page at a time after the name given, says whether more follow,
// and adds the lost/missing lists to the first page only.
func TestListPages(t *testing.T) {
	c := New(Config{Domain: "usher.test"}, allowHooks{})
	c.st.mu.Lock()
	for i := range 7 {
		for _, owner := range []string{"alice", "bob"} {
			short := fmt.Sprintf("web%d", i+1)
			st := api.StateRunning
			if i == 6 {
				st = api.StateLost
			}
			vm := &api.VM{Name: api.FullName(short, owner, "usher.test"), Short: short, Owner: owner, Cluster: "web", LNM: "n1", State: st}
			c.st.insertLocked(vm)
		}
	}
	c.st.mu.Unlock()
	alice := api.Identity{User: "alice"}
	var names []string
	after := ""
	for pages := 1; ; pages++ {
		rep, err := c.List(context.Background(), alice, api.ListArgs{After: after, Limit: 3, Lists: true})
		if err != nil {
			t.Fatal(err)
		}
		if (after == "") != (len(rep.Lost) > 0) {
			t.Fatalf("page %d has %d lost VMs; the first page carries the lists, the others not", pages, len(rep.Lost))
		}
		for _, v := range rep.VMs {
			if v.Owner != "alice" {
				t.Fatalf("page %d holds %s", pages, v.Name)
			}
			names = append(names, v.Name)
		}
		if wantMore := pages < 3; rep.More != wantMore || (rep.More && len(rep.VMs) != 3) {
			t.Fatalf("page %d: %d VMs, more %v", pages, len(rep.VMs), rep.More)
		}
		if !rep.More {
			break
		}
		after = rep.VMs[len(rep.VMs)-1].Name
	}
	if len(names) != 7 || !slices.IsSorted(names) {
		t.Fatalf("pages gave %v, want alice's 7 VMs in name order", names)
	}
}
