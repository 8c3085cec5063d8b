package lua

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
)

// reloads returns a channel that receives every completed reload.
func reloads(h *Host) chan reloadResult {
	ch := make(chan reloadResult, 64)
	f := func(path string, err error) { ch <- reloadResult{filepath.Base(path), err} }
	h.onReload.Store(&f)
	return ch
}

type reloadResult struct {
	file string
	err  error
}

func waitReload(t *testing.T, ch chan reloadResult, file string) reloadResult {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-ch:
			if r.file == file {
				return r
			}
		case <-deadline:
			t.Fatalf("no reload of %s within 10s", file)
		}
	}
}

const placeN = `usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.lnm = "%s"; vm.data.rev = "%s" end
end, {name = "place"})
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do if vm.data.rev ~= "%s" then error("half-loaded chain") end end
end, {name = "verify", order = 60})
`

func placeScript(lnm, rev string) string {
	return strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(placeN, `"%s"; vm.data.rev = "%s"`, `"`+lnm+`"; vm.data.rev = "`+rev+`"`), `~= "%s"`, `~= "`+rev+`"`), "%s", "")
}

func TestHotReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "place.lua", placeScript("n1", "1"))
	h := newHost(t, Options{Dirs: []string{dir}, Watch: true, PoolSize: 4, Budget: 5 * time.Second}) // reload, not budgets, is under test
	ch := reloads(h)

	var failed, served atomic.Int64
	var seen sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := run(h, api.EvStartRequest, startReq("c1", "c2"))
				if err != nil {
					failed.Add(1)
					t.Error(err)
					continue
				}
				served.Add(1)
				seen.Store(d.VMs[0].LNM, true)
			}
		}()
	}
	for rev := 2; rev <= 6; rev++ {
		lnm := []string{"n1", "n2", "n3"}[rev%3]
		saveByRename(t, dir, "place.lua", placeScript(lnm, string(rune('0'+rev))))
		if r := waitReload(t, ch, "place.lua"); r.err != nil {
			t.Fatal(r.err)
		}
		// a request after the reload sees the new version
		d, err := run(h, api.EvStartRequest, startReq("c9"))
		if err != nil || d.VMs[0].LNM != lnm {
			t.Fatalf("rev %d: lnm %q err %v", rev, d.VMs[0].LNM, err)
		}
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || served.Load() == 0 {
		t.Fatalf("served %d failed %d", served.Load(), failed.Load())
	}
	t.Logf("served %d requests across 5 reloads, 0 failed", served.Load())
}

func TestSyntaxErrorKeepsOldVersion(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "place.lua", placeScript("n1", "1"))
	var errs []api.Event
	var mu sync.Mutex
	h := newHost(t, Options{Dirs: []string{dir}, Watch: true})
	h.SetErrorSink(func(e api.Event) { mu.Lock(); errs = append(errs, e); mu.Unlock() })
	ch := reloads(h)
	saveByRename(t, dir, "place.lua", "usher.on(\"start_request\", function(req)\n  local x = = 1\nend)\n")
	r := waitReload(t, ch, "place.lua")
	if r.err == nil || !strings.Contains(r.err.Error(), "place.lua:2:") {
		t.Fatalf("reload err %v", r.err)
	}
	d, err := run(h, api.EvStartRequest, startReq("c1"))
	if err != nil || d.VMs[0].LNM != "n1" {
		t.Fatalf("old version not kept: %v %v", d.VMs[0].LNM, err)
	}
	st := h.Status()[0]
	if !strings.Contains(st.LastError, "place.lua:2:") || !st.Loaded {
		t.Fatalf("status %+v", st)
	}
	mu.Lock()
	if len(errs) != 1 || errs[0].Detail["line"] != "2" || errs[0].Detail["script"] != "place.lua" {
		t.Fatalf("error events %+v", errs)
	}
	mu.Unlock()
	// a runtime error in the top level also keeps the old version
	saveByRename(t, dir, "place.lua", "usher.on(\"start_request\", function() end)\nusher.on(\"no_such_event\", function() end)\n")
	r = waitReload(t, ch, "place.lua")
	if r.err == nil || !strings.Contains(r.err.Error(), "place.lua:2:") || !strings.Contains(r.err.Error(), "no_such_event") {
		t.Fatalf("reload err %v", r.err)
	}
	// fixing it clears last_error
	saveByRename(t, dir, "place.lua", placeScript("n3", "3"))
	if r := waitReload(t, ch, "place.lua"); r.err != nil {
		t.Fatal(r.err)
	}
	if st := h.Status()[0]; st.LastError != "" {
		t.Fatalf("last error kept: %q", st.LastError)
	}
}

func TestFileRemovalUnregisters(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "place.lua", placeScript("n1", "1"))
	writeScript(t, dir, "other.lua", `usher.on("authorize", function() end)`)
	h := newHost(t, Options{Dirs: []string{dir}, Watch: true})
	ch := reloads(h)
	// editor droppings are ignored
	writeScript(t, dir, ".#place.lua", "garbage(")
	writeScript(t, dir, "place.lua~", "garbage(")
	os.Remove(filepath.Join(dir, "place.lua"))
	waitReload(t, ch, "place.lua")
	d, err := run(h, api.EvStartRequest, startReq("c1"))
	if err != nil || d.VMs[0].LNM != "" || len(d.Trace) != 0 {
		t.Fatalf("handlers of removed file still run: %+v %v", d, err)
	}
	for _, s := range h.Status() {
		if s.Name == "place" {
			t.Fatalf("removed script still in status")
		}
	}
	if len(h.Status()) != 1 {
		t.Fatalf("status %+v", h.Status())
	}
}

func TestTimersStopOnReload(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "tick.lua", `usher.every(0.02, function(ev) usher.store.set("old", (usher.store.get("old") or 0) + 1) end)`)
	h, _ := New(Options{Dirs: []string{dir}, Watch: true, Logger: quietLogger()})
	sets := make(chan string, 1024)
	h.store.hook = func(k string, v any) {
		select {
		case sets <- k:
		default:
		}
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ch := reloads(h)
	next := func() string {
		select {
		case k := <-sets:
			return k
		case <-time.After(10 * time.Second):
			t.Fatal("timer did not fire")
		}
		return ""
	}
	for next() != "old" {
	}
	saveByRename(t, dir, "tick.lua", `usher.every(0.02, function(ev) usher.store.set("new", 1) end)`)
	waitReload(t, ch, "tick.lua")
	for next() != "new" {
	}
	// From now on only the new timer fires: five ticks in a row are "new".
	for i := 0; i < 5; i++ {
		if k := next(); k != "new" {
			t.Fatalf("old timer still running (got %q)", k)
		}
	}
}
