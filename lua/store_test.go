package lua

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStoreBounds: keys, values and the whole store are bounded; a full
// store refuses growth but takes deletions and smaller values.
func TestStoreBounds(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "s.db"), StoreLimits{MaxKey: 16, MaxValue: 100, MaxTotal: 1000}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if err := st.set("t", strings.Repeat("k", 17), 1, 0); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("long key: %v", err)
	}
	if err := st.set("t", "k", strings.Repeat("v", 200), 0); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("big value: %v", err)
	}
	n := 0
	for ; n < 100; n++ {
		if err := st.set("t", fmt.Sprintf("k%02d", n), strings.Repeat("v", 80), 0); err != nil {
			if !strings.Contains(err.Error(), "full") {
				t.Fatalf("filling: %v", err)
			}
			break
		}
	}
	if n == 0 || n == 100 || st.size() > 1000 {
		t.Fatalf("stored %d values, %d bytes; want the store to fill under 1000 bytes", n, st.size())
	}
	if err := st.set("t", "k00", "small", 0); err != nil {
		t.Fatalf("a smaller value in a full store: %v", err)
	}
	if err := st.delete("t", "k01"); err != nil {
		t.Fatal(err)
	}
	if err := st.set("t", "new", strings.Repeat("v", 50), 0); err != nil {
		t.Fatalf("after a deletion: %v", err)
	}
	// Another script's share is its own: t's full store does not stop it.
	if err := st.set("other", "o1", strings.Repeat("v", 80), 0); err != nil {
		t.Fatalf("another script's write with t's share full: %v", err)
	}
}

// TestStoreOperations: cas, incr, list by prefix with paging, expiry.
func TestStoreOperations(t *testing.T) {
	st, err := openStore("", StoreLimits{}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if ok, err := st.cas("t", "lock", nil, "a", 0); !ok || err != nil {
		t.Fatalf("cas on absent: %v %v", ok, err)
	}
	if ok, _ := st.cas("t", "lock", nil, "b", 0); ok {
		t.Fatal("cas on present with old nil swapped")
	}
	if ok, _ := st.cas("t", "lock", "a", "b", 0); !ok {
		t.Fatal("cas a→b refused")
	}
	for range 3 {
		st.incr("t", "n", 2)
	}
	if v, _ := st.get("n"); v != float64(6) {
		t.Fatalf("incr: %v", v)
	}
	for i := range 5 {
		st.set("t", fmt.Sprintf("lease.%d", i), i, 0)
	}
	st.set("t", "leasex", 9, 0)
	keys, _, _ := st.list("lease.", "", 3)
	more, _, _ := st.list("lease.", keys[len(keys)-1], 3)
	if len(keys) != 3 || len(more) != 2 || keys[0] != "lease.0" || more[1] != "lease.4" {
		t.Fatalf("list pages: %v then %v", keys, more)
	}
	st.set("t", "short", 1, time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _ := st.get("short")
		if v == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an expired key is still read")
		}
		time.Sleep(5 * time.Millisecond) // waiting for the clock to pass the expiry
	}
}

// TestStoreDamagedMovedAside: a damaged database is moved aside and the
// store starts empty.
func TestStoreDamagedMovedAside(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.db")
	os.WriteFile(p, []byte("not a database, not at all, really not"), 0o600)
	st, err := openStore(p, StoreLimits{}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	if aside, _ := filepath.Glob(p + ".damaged-*"); len(aside) != 1 {
		t.Fatalf("not moved aside: %v", aside)
	}
	defer st.close()
	if err := st.set("", "a", "b", 0); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.get("a"); v != "b" {
		t.Fatalf("the new store holds a = %v", v)
	}
}

// TestStoreFromLua: the usher.store functions from a handler.
func TestStoreFromLua(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "s.lua", `usher.on("start_request", function(req)
  usher.store.set("a.1", {x = 1})
  usher.store.set("a.2", "two", "1h")
  usher.store.incr("count", 5)
  assert(usher.store.cas("lock", nil, "me"))
  assert(not usher.store.cas("lock", nil, "other"))
  local items = usher.store.list("a.")
  assert(items["a.1"].x == 1 and items["a.2"] == "two", "list")
  assert(usher.store.get("count") == 5, "incr")
  usher.store.delete("a.1")
  assert(usher.store.get("a.1") == nil, "delete")
  local ok, err = pcall(usher.store.set, string.rep("k", 300), 1)
  assert(not ok and err:find("key"), "long key: " .. tostring(err))
end)`)
	h := newHost(t, Options{Dirs: []string{dir}})
	mustRun(t, h, "start_request", startReq("c1"))
}
