package lua

import (
	"math/bits"
	"sort"
	"sync/atomic"
	"time"
)

// hstats are lock-free per-handler counters with a log2 latency histogram.
type hstats struct {
	calls   atomic.Uint64
	errors  atomic.Uint64
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

// HandlerStatus describes one registration of a script.
type HandlerStatus struct {
	Event   string  `json:"event"`
	Order   int     `json:"order"`
	Name    string  `json:"name"`
	Every   string  `json:"every,omitempty"`   // timers
	Runtime bool    `json:"runtime,omitempty"` // added with Register
	Active  bool    `json:"active"`
	Calls   uint64  `json:"calls"`
	Errors  uint64  `json:"errors"`
	TotalUS int64   `json:"total_us"`
	MeanUS  float64 `json:"mean_us"`
	P50US   int64   `json:"p50_us"` // upper bound of the log2 bucket
	P99US   int64   `json:"p99_us"`
	MaxUS   int64   `json:"max_us"`
}

// ScriptStatus describes one script.
type ScriptStatus struct {
	Name      string          `json:"name"`
	File      string          `json:"file"`
	Hash      string          `json:"hash,omitempty"`
	LoadedAt  time.Time       `json:"loaded_at,omitempty"`
	Loaded    bool            `json:"loaded"`
	LastError string          `json:"last_error,omitempty"`
	ErrorAt   time.Time       `json:"error_at,omitempty"`
	States    int             `json:"states"` // Lua states currently created
	Handlers  []HandlerStatus `json:"handlers"`
}

// Status reports every script, sorted by name.
func (h *Host) Status() []ScriptStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]ScriptStatus, 0, len(h.scripts))
	for _, s := range h.scripts {
		st := ScriptStatus{Name: s.name, File: s.path, LastError: s.lastErr, ErrorAt: s.lastErrAt, Handlers: []HandlerStatus{}}
		if v := s.cur; v != nil {
			st.Hash, st.LoadedAt, st.Loaded, st.States = v.hash, v.loadedAt, true, int(v.created.Load())
			add := func(hd *handler, rt bool) {
				hs := HandlerStatus{Event: hd.spec.event, Order: hd.spec.order, Name: hd.spec.name, Runtime: rt,
					Active: h.activeLocked(s.name, hd)}
				if hd.spec.every > 0 {
					hs.Every = hd.spec.every.String()
				}
				hs.Calls, hs.Errors = hd.stats.calls.Load(), hd.stats.errors.Load()
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
