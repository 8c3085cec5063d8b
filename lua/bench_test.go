package lua

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

// BenchmarkChain5 runs a start request with two VMs through five handlers
// (five scripts, so five pools) that read and modify it.
func BenchmarkChain5(b *testing.B) {
	dir := b.TempDir()
	for i := 1; i <= 5; i++ {
		writeScript(b, dir, fmt.Sprintf("h%d.lua", i), fmt.Sprintf(`
usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do
    if vm.mem_mb > 0 then vm.data.h%d = "ok" end
  end
end, {order = %d})`, i, i*10))
	}
	h := newHost(b, Options{Dirs: []string{dir}})
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := startReq("c1", "c2")
		t0 := time.Now()
		if err := h.Request(ctx, api.EvStartRequest, r, core.NewDecision(r)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkPoolParallel measures throughput of one script's pool under
// parallel requests.
func BenchmarkPoolParallel(b *testing.B) {
	dir := b.TempDir()
	writeScript(b, dir, "p.lua", `usher.on("start_request", function(req) for _, v in ipairs(req.vms) do v.lnm = "n1" end end)`)
	h := newHost(b, Options{Dirs: []string{dir}})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := run(h, api.EvStartRequest, startReq("c1")); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSlowScriptIsolation: one script's handler busy-loops for 20ms on
// op_request while start_request (another script) is measured: its latency
// must not include the slow script's.
func BenchmarkSlowScriptIsolation(b *testing.B) {
	dir := b.TempDir()
	writeScript(b, dir, "slow.lua", `usher.on("op_request", function(req) local t = usher.time() while usher.time() - t < 0.02 do end end)`)
	writeScript(b, dir, "fast.lua", `usher.on("start_request", function(req) for _, v in ipairs(req.vms) do v.lnm = "n1" end end)`)
	h := newHost(b, Options{Dirs: []string{dir}, PoolSize: 8})
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
				run(h, api.EvOpRequest, opReq(api.OpPause, "c1"))
			}
		}()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := run(h, api.EvStartRequest, startReq("c1")); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
}

// BenchmarkConvert compares handing an LNM to Lua as a view with a JSON
// round trip into tables, the alternative the design considered.
func BenchmarkConvert(b *testing.B) {
	L := glua.NewState()
	defer L.Close()
	n := &api.LNM{Info: api.NodeInfo{Name: "n1", CPUs: 8, MemMB: 16384, Driver: "sim"}, State: api.LNMConnected}
	b.Run("view", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			lnmValue(L, n)
		}
	})
	b.Run("json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			bs, _ := json.Marshal(n)
			var m map[string]any
			json.Unmarshal(bs, &m)
			toLua(L, m)
		}
	})
}

// BenchmarkShippedSingleStart runs what a single-VM start costs in Lua with
// the shipped policies the bench loads: the authorize chain (authz_owner)
// and the start_request chain (quota, place_leastloaded) over 100 nodes.
func BenchmarkShippedSingleStart(b *testing.B) {
	dir := b.TempDir()
	for _, f := range []string{"authz_owner.lua", "quota.lua", "place_leastloaded.lua", "lib/placement.lua"} {
		src, err := os.ReadFile(filepath.Join("..", "scripts", f))
		if err != nil {
			b.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, f), src, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	h, err := New(Options{Dirs: []string{dir}, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	// The controller's own state, as in production (its LNM queries).
	c := core.New(core.Config{Domain: "usher.test"}, h)
	for i := 0; i < 100; i++ {
		st := api.NodeStatus{FreeMemMB: 65536 - i, FreeVCPUs: 64, Usage: api.Usage{CPU: api.Avg{M1: float64(i%7) / 10}}}
		name := fmt.Sprintf("n%d", i)
		hello := api.Hello{Node: api.NodeInfo{Name: name, CPUs: 8, MemMB: 65536}, Status: st}
		if _, err := c.AttachLNM(context.Background(), hello, apitest.NewNode(name), nil); err != nil {
			b.Fatal(err)
		}
	}
	h.Bind(c.State(), nil)
	if err := h.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r := startReq("c1")
		d := core.NewDecision(r)
		if err := h.Authorize(ctx, r, d); err != nil {
			b.Fatal(err)
		}
		if err := h.Request(ctx, api.EvStartRequest, r, d); err != nil {
			b.Fatal(err)
		}
		if d.Kept() != 1 || d.VMs[0].LNM == "" {
			b.Fatalf("not placed: %+v dropped %+v", d.VMs, d.Dropped)
		}
	}
}
