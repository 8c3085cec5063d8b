package nodemgr

import (
	"math"
	"time"

	"github.com/usher-vm/usher/api"
)

// Sample is one instantaneous reading of a VM's or node's resource use.
type Sample struct {
	CPU       float64 // cores busy
	MemBytes  float64
	NetRx     float64 // bytes/s
	NetTx     float64
	DiskRead  float64
	DiskWrite float64
}

// Averager turns periodic samples into 1/5/15-minute exponentially damped
// averages, the way Unix load averages are computed. The first sample seeds
// all three averages. Not safe for concurrent use.
type Averager struct {
	u      api.Usage
	seeded bool
}

func damp(a *api.Avg, x float64, dt time.Duration) {
	s := dt.Seconds()
	a.M1 = x + (a.M1-x)*math.Exp(-s/60)
	a.M5 = x + (a.M5-x)*math.Exp(-s/300)
	a.M15 = x + (a.M15-x)*math.Exp(-s/900)
}

// Add folds in a sample taken dt after the previous one.
func (g *Averager) Add(s Sample, dt time.Duration) {
	if !g.seeded {
		seed := func(x float64) api.Avg { return api.Avg{M1: x, M5: x, M15: x} }
		g.u = api.Usage{CPU: seed(s.CPU), MemBytes: seed(s.MemBytes), NetRx: seed(s.NetRx), NetTx: seed(s.NetTx),
			DiskRead: seed(s.DiskRead), DiskWrite: seed(s.DiskWrite)}
		g.seeded = true
		return
	}
	damp(&g.u.CPU, s.CPU, dt)
	damp(&g.u.MemBytes, s.MemBytes, dt)
	damp(&g.u.NetRx, s.NetRx, dt)
	damp(&g.u.NetTx, s.NetTx, dt)
	damp(&g.u.DiskRead, s.DiskRead, dt)
	damp(&g.u.DiskWrite, s.DiskWrite, dt)
}

// Usage returns the current averages.
func (g *Averager) Usage() api.Usage { return g.u }
