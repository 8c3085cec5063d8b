package lua

import (
	"math/bits"
	"sort"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
)

// hstats are lock-free per-handler counters with a log2 latency histogram.
type hstats struct {
	calls   atomic.Uint64
	errors  atomic.Uint64
	cuts    atomic.Uint64 // calls cut off at a budget or limit
	totalNs atomic.Int64
	maxNs   atomic.Int64
	buckets [32]atomic.Uint64 // bucket i: latency < 2^i µs
}

func (s *hstats) record(d time.Duration, failed bool) {
	s.calls.Add(1)
	if failed {
		s.errors.Add(1)
	}
	ns := d.Nanoseconds()
	s.totalNs.Add(ns)
	for {
		m := s.maxNs.Load()
		if ns <= m || s.maxNs.CompareAndSwap(m, ns) {
			break
		}
	}
	us := uint64(ns / 1000)
	b := bits.Len64(us)
	if b >= len(s.buckets) {
		b = len(s.buckets) - 1
	}
	s.buckets[b].Add(1)
}

// quantile returns the upper bound (µs) of the bucket holding quantile q.
func (s *hstats) quantile(q float64) int64 {
	var counts [32]uint64
	var total uint64
	for i := range s.buckets {
		counts[i] = s.buckets[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return 0
	}
	want := uint64(q*float64(total) + 0.5)
	if want == 0 {
		want = 1
	}
	var acc uint64
	for i, c := range counts {
		acc += c
		if acc >= want {
			return int64(1) << i
		}
	}
	return int64(1) << 31
}

// Status reports every script, sorted by name.
func (h *Host) Status() []api.ScriptStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.ScriptStatus, 0, len(h.scripts))
	for _, s := range h.scripts {
		st := api.ScriptStatus{Name: s.name, File: s.path, LastError: s.lastErr, ErrorAt: s.lastErrAt, Handlers: []api.HandlerStatus{}}
		if v := s.cur; v != nil {
			st.Hash, st.LoadedAt, st.Loaded, st.States = v.hash, v.loadedAt, true, int(v.created.Load())
			add := func(hd *handler, rt bool) {
				hs := api.HandlerStatus{Event: hd.spec.event, Order: hd.spec.order, Name: hd.spec.name, Runtime: rt,
					Active: h.activeLocked(s.name, hd)}
				if hd.spec.every > 0 {
					hs.Every = hd.spec.every.String()
				}
				hs.Calls, hs.Errors, hs.Cut = hd.stats.calls.Load(), hd.stats.errors.Load(), hd.stats.cuts.Load()
				hs.TotalUS = hd.stats.totalNs.Load() / 1000
				if hs.Calls > 0 {
					hs.MeanUS = float64(hd.stats.totalNs.Load()) / 1000 / float64(hs.Calls)
				}
				hs.P50US, hs.P99US = hd.stats.quantile(0.5), hd.stats.quantile(0.99)
				hs.MaxUS = hd.stats.maxNs.Load() / 1000
				st.Handlers = append(st.Handlers, hs)
			}
			for _, hd := range v.handlers {
				add(hd, false)
			}
			for _, hd := range s.runtime {
				add(hd, true)
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
