package ha_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/ha/member"
	"github.com/usher-vm/usher/internal/waitfor"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs one embedded member on loopback for the test.
func startEtcd(t *testing.T) string {
	t.Helper()
	cp, pp := freePort(t), freePort(t)
	cu, pu := fmt.Sprintf("http://127.0.0.1:%d", cp), fmt.Sprintf("http://127.0.0.1:%d", pp)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- member.Run(ctx, member.Config{Name: "m0", Dir: t.TempDir(), ClientURL: cu, PeerURL: pu, TickMs: 50, ElectionMs: 500}, ready)
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("etcd member: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("etcd member not ready")
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return cu
}

// leaders runs n members that record when they lead.
type leaders struct {
	mu      sync.Mutex
	leading map[string]int64 // id → term while leading
	terms   []int64
}

func (l *leaders) lead(id string) func(ctx context.Context, term int64) {
	return func(ctx context.Context, term int64) {
		l.mu.Lock()
		l.leading[id] = term
		l.terms = append(l.terms, term)
		l.mu.Unlock()
		<-ctx.Done()
		l.mu.Lock()
		delete(l.leading, id)
		l.mu.Unlock()
	}
}

func (l *leaders) now() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int64{}
	for k, v := range l.leading {
		out[k] = v
	}
	return out
}

// TestElectionTermsAndGuardedWrites: of three controllers exactly one
// leads; its writes go through while it leads in its term; when it stops
// (its process gone: its lease is no longer renewed), another is elected
// with a higher term, and a write for the old term is refused by etcd.
func TestElectionTermsAndGuardedWrites(t *testing.T) {
	// Runs last (cleanups run in reverse): after the members and etcd stop.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	ep := startEtcd(t)
	rec := &leaders{leading: map[string]int64{}}
	members := map[string]*ha.Member{}
	stops := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	for _, id := range []string{"c1", "c2", "c3"} {
		m, err := ha.New(ha.Config{Endpoints: []string{ep}, Prefix: "/usher/test/", TTL: 3 * time.Second, ID: id, Address: id + ":7000"})
		if err != nil {
			t.Fatal(err)
		}
		members[id] = m
		ctx, cancel := context.WithCancel(context.Background())
		stops[id] = cancel
		wg.Add(1)
		go func() { defer wg.Done(); m.Run(ctx, rec.lead(id)) }()
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
		wg.Wait()
		for _, m := range members {
			m.Close()
		}
	}()
	var first string
	var term int64
	waitfor.True(t, 60*time.Second, "one leader", func() bool {
		now := rec.now()
		for id, tm := range now {
			first, term = id, tm
		}
		return len(now) == 1
	})
	ctx := context.Background()
	l, err := members["c1"].CurrentLeader(ctx)
	if err != nil || l.ID != first || l.Term != term || l.Address != first+":7000" {
		t.Fatalf("current leader: %+v %v (leads: %s in %d)", l, err, first, term)
	}
	st, err := members["c1"].Health(ctx)
	if err != nil || st.Leader.ID != first || len(st.Controllers) != 3 || st.Controllers[0].ID != first || len(st.Members) != 1 || !st.Members[0].OK {
		t.Fatalf("health: %+v %v", st, err)
	}
	if err := members[first].Put(ctx, term, "known/n1", "x"); err != nil {
		t.Fatalf("leader's write: %v", err)
	}
	for id, m := range members {
		if id != first {
			if err := m.Put(ctx, term, "known/n1", "y"); !errors.Is(err, ha.ErrNotLeader) {
				t.Fatalf("%s (not leading) wrote: %v", id, err)
			}
		}
	}
	// The leader's process goes: no more renewals, no resignation.
	// Its etcd client closes first, so nothing is revoked: the lease
	// must expire.
	old := members[first]
	oldKey := old.Key()
	oldCli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer oldCli.Close()
	old.Close()
	stopped := time.Now()
	stops[first]()
	delete(stops, first)
	var second string
	var term2 int64
	waitfor.True(t, 60*time.Second, "another leader", func() bool {
		for id, tm := range rec.now() {
			if id != first {
				second, term2 = id, tm
				return true
			}
		}
		return false
	})
	if term2 <= term {
		t.Fatalf("new term %d not above the old %d", term2, term)
	}
	t.Logf("%s led in term %d; %s leads in term %d, %v after %s's client closed", first, term, second, term2, time.Since(stopped).Round(time.Millisecond), first)
	// A write guarded by the old term fails at etcd even if sent.
	if oldKey == "" {
		t.Fatal("the leader has no election key")
	}
	resp, err := oldCli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(oldKey), "=", term)).
		Then(clientv3.OpPut("/usher/test/known/n1", "stale")).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("stale write: %v %v", err, resp)
	}
	if err := members[second].Put(ctx, term2, "known/n1", "z"); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
	if v, ok, err := members[second].Get(ctx, "known/n1"); err != nil || !ok || v != "z" {
		t.Fatalf("read back: %q %v %v", v, ok, err)
	}
}

// TestLeaderStopsWhenItsLeaseGoes: the leader's lease revoked behind its
// back (as etcd does when it expires): it stops leading within the TTL,
// and its writes for that term are refused.
func TestLeaderStopsWhenItsLeaseGoes(t *testing.T) {
	ep := startEtcd(t)
	rec := &leaders{leading: map[string]int64{}}
	m, err := ha.New(ha.Config{Endpoints: []string{ep}, Prefix: "/usher/t2/", TTL: 3 * time.Second, ID: "c1", Address: "c1:7000"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, rec.lead("c1")) }()
	defer func() { cancel(); <-done }()
	var term int64
	waitfor.True(t, 60*time.Second, "c1 leads", func() bool { term = rec.now()["c1"]; return term > 0 })
	lctx, _ := m.Leading()
	// Revoke every lease: c1's election key goes with its lease.
	leases, err := m.Client().Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Leases {
		m.Client().Revoke(context.Background(), l.ID)
	}
	select {
	case <-lctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("still leading after its lease was revoked")
	}
	if err := m.Put(context.Background(), term, "k", "v"); !errors.Is(err, ha.ErrNotLeader) {
		t.Fatalf("write after losing the lease: %v", err)
	}
	// It campaigns again and leads in a new term.
	waitfor.True(t, 60*time.Second, "c1 leads again", func() bool { t2 := rec.now()["c1"]; return t2 > term })
}

// TestWatchLeaderRevokesADeadLeader: a standby's probe of the leader's
// address answers "accepting", then "refused": only after it was seen
// accepting in the leader's term and refused twice in a row does the
// standby revoke the leader's lease (the leader's lead context ends at
// once, not after the TTL), and the standby leads in a newer term. A
// leader never seen accepting is left to its lease.
func TestWatchLeaderRevokesADeadLeader(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	ep := startEtcd(t)
	rec := &leaders{leading: map[string]int64{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// A long TTL: a failover within it is the probe's doing.
	const ttl = 30 * time.Second
	lead, err := ha.New(ha.Config{Endpoints: []string{ep}, Prefix: "/usher/w/", TTL: ttl, ID: "a", Address: "a:7000"})
	if err != nil {
		t.Fatal(err)
	}
	defer lead.Close()
	wg.Add(1)
	go func() { defer wg.Done(); lead.Run(ctx, rec.lead("a")) }()
	waitfor.True(t, 60*time.Second, "a to lead", func() bool { _, ok := rec.now()["a"]; return ok })
	stby, err := ha.New(ha.Config{Endpoints: []string{ep}, Prefix: "/usher/w/", TTL: ttl, ID: "b", Address: "b:7000"})
	if err != nil {
		t.Fatal(err)
	}
	defer stby.Close()
	var mu sync.Mutex
	refuse, probes := true, 0 // refused from the start: never seen alive
	probe := func(ctx context.Context, addr string) bool {
		mu.Lock()
		defer mu.Unlock()
		if addr != "a:7000" {
			t.Errorf("probed %s", addr)
		}
		probes++
		return refuse
	}
	wctx, stopWatch := context.WithCancel(ctx)
	poke := make(chan struct{}, 1)
	wg.Add(1)
	go func() { defer wg.Done(); stby.WatchLeader(wctx, 20*time.Millisecond, 2, poke, probe) }()
	wg.Add(1)
	go func() { defer wg.Done(); stby.Run(ctx, rec.lead("b")) }()
	count := func() int { mu.Lock(); defer mu.Unlock(); return probes }
	waitfor.True(t, 30*time.Second, "ten refused probes", func() bool { return count() >= 10 })
	if _, ok := rec.now()["a"]; !ok || stby.Suspected() != 0 {
		t.Fatalf("a leader never seen accepting was replaced: leading %v, suspected %d", rec.now(), stby.Suspected())
	}
	// Seen alive, then gone.
	mu.Lock()
	refuse = false
	mu.Unlock()
	n := count()
	waitfor.True(t, 30*time.Second, "a probe that is accepted", func() bool { return count() > n+1 })
	mu.Lock()
	refuse = true
	mu.Unlock()
	t0 := time.Now()
	var bTerm int64
	waitfor.True(t, 20*time.Second, "b to lead", func() bool {
		now := rec.now()
		_, aLeads := now["a"]
		bTerm = now["b"]
		return !aLeads && bTerm > 0
	})
	if d := time.Since(t0); d > ttl/2 {
		t.Fatalf("b led %v after a's address refused: the lease was not revoked", d)
	}
	stopWatch()
}
