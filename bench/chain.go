package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/policytool"
)

// benchChain measures the per-event cost of five Lua handlers on
// start_request, in process (no network), for o.duration.
func benchChain(ctx context.Context, o benchOpts, rep *benchReport, out io.Writer) error {
	dir, err := os.MkdirTemp("", "usher-chain-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var src strings.Builder
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(&src, `usher.on("start_request", function(req)
  for _, vm in ipairs(req.vms) do vm.data = vm.data or {}; vm.data.h%[1]d = "x" end
end, {order = %[1]d, name = "h%[1]d"})
`, i)
	}
	if err := os.WriteFile(filepath.Join(dir, "chain.lua"), []byte(src.String()), 0o644); err != nil {
		return err
	}
	h, err := lua.New(lua.Options{Dirs: []string{dir}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer h.Close()
	view := policytool.NewFixtureView()
	h.Bind(view, nil)
	if err := h.Start(ctx); err != nil {
		return err
	}
	lat := &latencies{}
	deadline := time.Now().Add(o.duration)
	var n int64
	start := time.Now()
	for time.Now().Before(deadline) && n < 100_000_000 {
		req := &core.Request{Kind: core.KindStart, User: api.Identity{User: "bench"}, Cluster: "web",
			VMs: []core.ReqVM{{Name: "web1.bench.usher.test", Short: "web1", Owner: "bench", Cluster: "web", MemMB: 128, VCPUs: 1}}}
		t0 := time.Now()
		if err := h.Request(ctx, api.EvStartRequest, req, core.NewDecision(req)); err != nil {
			rep.Errors++
		}
		lat.add(time.Since(t0))
		n++
		if n%200000 == 0 && !o.quiet {
			fmt.Fprintf(out, "[%s] %d events\n", time.Now().Format("15:04:05"), n)
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Requests = n
	rep.ThroughputPerS = float64(n) / rep.Seconds
	rep.LNMs, rep.VMs, rep.Clients = 0, 0, 1
	rep.Notes = "five handlers on start_request, one VM per request, in process"
	lat.fill(rep)
	// p50 in µs is what the target is stated in
	rep.Notes += fmt.Sprintf("; p50 %.1f µs", rep.P50ms*1000)
	return nil
}
