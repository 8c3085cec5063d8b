package ha_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/internal/waitfor"
)

// leading runs one member until it leads and returns it with its term.
func leading(t *testing.T, ep, prefix string) (*ha.Member, int64) {
	t.Helper()
	m, err := ha.New(ha.Config{Endpoints: []string{ep}, Prefix: prefix, TTL: 3 * time.Second, ID: "c1", Address: "c1:7000"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	terms := make(chan int64, 4)
	go func() {
		defer close(done)
		m.Run(ctx, func(lctx context.Context, term int64) { terms <- term; <-lctx.Done() })
	}()
	t.Cleanup(func() { cancel(); <-done; m.Close() })
	select {
	case term := <-terms:
		return m, term
	case <-time.After(60 * time.Second):
		t.Fatal("not elected")
	}
	return nil, 0
}

// TestReplicatedPolicyStore: usher.store in etcd behaves as the SQLite
// store — get/set/delete, expiry, compare-and-set, increments, listing by
// prefix in key order with paging, per-script shares — and a store of a
// term that ended writes nothing.
func TestReplicatedPolicyStore(t *testing.T) {
	ep := startEtcd(t)
	m, term := leading(t, ep, "/usher/kv/")
	kv := m.Store(term).KV(32, 200, 600)
	if v, err := kv.Get("lease.web1"); err != nil || v != nil {
		t.Fatalf("absent: %v %v", v, err)
	}
	if err := kv.Set("lease", "lease.web1", map[string]any{"user": "alice", "n": 2.0}, 0); err != nil {
		t.Fatal(err)
	}
	if v, err := kv.Get("lease.web1"); err != nil || fmt.Sprint(v) != "map[n:2 user:alice]" {
		t.Fatalf("get: %v %v", v, err)
	}
	// Expiry.
	if err := kv.Set("lease", "tmp", "x", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "tmp to expire", func() bool { v, _ := kv.Get("tmp"); return v == nil })
	// Compare-and-set: absent → set; wrong old → no; right old → yes.
	if ok, err := kv.CAS("lease", "owner", nil, "alice", 0); !ok || err != nil {
		t.Fatalf("cas from absent: %v %v", ok, err)
	}
	if ok, err := kv.CAS("lease", "owner", nil, "bob", 0); ok || err != nil {
		t.Fatalf("cas over a value: %v %v", ok, err)
	}
	if ok, err := kv.CAS("lease", "owner", "alice", "bob", 0); !ok || err != nil {
		t.Fatalf("cas: %v %v", ok, err)
	}
	// The expired key counts as absent for cas too.
	kv.Set("lease", "gone", "x", 200*time.Millisecond)
	waitfor.True(t, 10*time.Second, "gone to expire", func() bool { v, _ := kv.Get("gone"); return v == nil })
	if ok, err := kv.CAS("lease", "gone", nil, "again", 0); !ok || err != nil {
		t.Fatalf("cas over an expired key: %v %v", ok, err)
	}
	// Increments, concurrently: none lost.
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 5 {
				if _, err := kv.Incr("ipam", "next", 1); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n, err := kv.Incr("ipam", "next", 0); err != nil || n != 40 {
		t.Fatalf("after 40 increments: %v %v", n, err)
	}
	if _, err := kv.Incr("ipam", "owner", 1); err == nil || !strings.Contains(err.Error(), "no number") {
		t.Fatalf("incr of a string: %v", err)
	}
	// Listing by prefix, paged.
	for i := range 5 {
		kv.Set("lease", fmt.Sprintf("l.%d", i), i, 0)
	}
	keys, vals, err := kv.List("l.", "", 3)
	if err != nil || strings.Join(keys, ",") != "l.0,l.1,l.2" || vals[2] != 2.0 {
		t.Fatalf("list: %v %v %v", keys, vals, err)
	}
	keys, _, err = kv.List("l.", "l.2", 10)
	if err != nil || strings.Join(keys, ",") != "l.3,l.4" {
		t.Fatalf("list after: %v %v", keys, err)
	}
	// Bounds: key, value, a script's share (others write on).
	if err := kv.Set("lease", strings.Repeat("k", 33), 1, 0); err == nil {
		t.Fatal("a 33-byte key")
	}
	if err := kv.Set("lease", "big", strings.Repeat("v", 300), 0); err == nil {
		t.Fatal("a 300-byte value")
	}
	var full error
	for i := 0; full == nil && i < 20; i++ {
		full = kv.Set("hog", fmt.Sprintf("hog.%d", i), strings.Repeat("h", 150), 0)
	}
	if full == nil || !strings.Contains(full.Error(), "full") {
		t.Fatalf("the hog's share: %v", full)
	}
	if err := kv.Set("lease", "after", "ok", 0); err != nil {
		t.Fatalf("another script after the hog filled its share: %v", err)
	}
	if err := kv.Delete("lease", "after"); err != nil {
		t.Fatal(err)
	}
	if v, _ := kv.Get("after"); v != nil {
		t.Fatalf("deleted: %v", v)
	}
	// A term that is not ours writes nothing.
	stale := m.Store(term-1).KV(0, 0, 0)
	if err := stale.Set("lease", "x", 1, 0); !errors.Is(err, ha.ErrNotLeader) {
		t.Fatalf("a stale term's write: %v", err)
	}
}

// TestKnownLNMsGroupCommit: a thousand registrations at once are recorded
// (in batched transactions), each in etcd when its Record returns, as a
// new term's Load sees; a store of an older term records nothing.
func TestKnownLNMsGroupCommit(t *testing.T) {
	ep := startEtcd(t)
	m, term := leading(t, ep, "/usher/known/")
	st := m.Store(term)
	if err := st.Load(); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			errs <- st.Record(api.NodeInfo{Name: fmt.Sprintf("n%d", i), Address: fmt.Sprintf("10.0.%d.%d:7001", i/250, i%250), Driver: "sim"})
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("record: %v", err)
		}
	}
	again := m.Store(term)
	if err := again.Load(); err != nil {
		t.Fatal(err)
	}
	if got := again.List(); len(got) != n || got[0].Driver != "sim" {
		t.Fatalf("etcd holds %d known LNMs (want %d)", len(got), n)
	}
	stale := m.Store(term - 1)
	if err := stale.Record(api.NodeInfo{Name: "late", Driver: "sim"}); !errors.Is(err, ha.ErrNotLeader) {
		t.Fatalf("a record of an older term: %v", err)
	}
}
