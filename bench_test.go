package usher

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/site"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
)

func benchSite(b *testing.B, lnms int) *site.Site {
	b.Helper()
	h := coretest.New(map[string]string{"alice": "pw"})
	s, err := site.Start(context.Background(), site.Options{Dir: b.TempDir(), LNMs: lnms, Hooks: h,
		Bind: func(c *core.Controller) { h.View = c.State() }, SimMemMB: 1 << 30, SimCPUs: 1 << 20,
		ReportInterval: 5 * time.Second, ScanInterval: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	return s
}

// BenchmarkStartPipeline starts VMs through the whole pipeline (client →
// TLS/yamux → authorize → start_request → register_vm → batched LNM start
// → start_complete) on 100 simulated LNMs, in requests of 10 VMs.
func BenchmarkStartPipeline(b *testing.B) {
	for _, batch := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("lnms=100/batch=%d", batch), func(b *testing.B) {
			s := benchSite(b, 100)
			ctx := context.Background()
			c, err := s.Client(ctx, "alice", "pw")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var n atomic.Int64
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := n.Add(1)
					r, err := c.Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("c%d", id), Count: batch})
					if err != nil || r.OK() != batch {
						b.Errorf("start: %v %+v", err, r)
						return
					}
				}
			})
			el := time.Since(start)
			b.ReportMetric(float64(int64(b.N)*int64(batch))/el.Seconds(), "VMs/s")
		})
	}
}
