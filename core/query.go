package core

import (
	"slices"
	"sort"
	"strings"

	"github.com/usher-vm/usher/api"
)

// --- StateView implementation ---

// VM implements StateView.
func (s *State) VM(name string) (*api.VM, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.vms[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

// VMsOf implements StateView.
func (s *State) VMsOf(owner, cluster string) []*api.VM {
	s.mu.RLock()
	m := s.owners[owner]
	if cluster != "" {
		m = nil
		if c := s.clusters[clusterKey{owner, cluster}]; c != nil {
			m = c.vms
		}
	}
	if m == nil {
		s.mu.RUnlock()
		return nil
	}
	out := cloneVMs(m, true, nil)
	s.mu.RUnlock()
	api.SortVMs(out)
	return out
}

// VMsOn implements StateView.
func (s *State) VMsOn(lnm string) []*api.VM {
	s.mu.RLock()
	l := s.lnms[lnm]
	if l == nil {
		s.mu.RUnlock()
		return nil
	}
	out := cloneVMs(l.vms, true, nil)
	s.mu.RUnlock()
	api.SortVMs(out)
	return out
}

// CountOf implements StateView.
func (s *State) CountOf(owner string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.owners[owner])
}

// LNM implements StateView.
func (s *State) LNM(name string) (*api.LNM, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l := s.lnms[name]
	if l == nil {
		return nil, false
	}
	c := l.lnm
	return &c, true
}

// connected reports whether the named LNM is known and connected (a
// per-VM check on the start path: no copy of the record).
func (s *State) connected(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l := s.lnms[name]
	return l != nil && l.lnm.State == api.LNMConnected
}

// LNMs implements StateView.
func (s *State) LNMs() []*api.LNM {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*api.LNM, 0, len(s.lnms))
	for _, l := range s.lnms {
		c := l.lnm
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Name < out[j].Info.Name })
	return out
}

// Clusters implements StateView.
func (s *State) Clusters(owner string) []api.Cluster {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []api.Cluster
	for k, c := range s.clusters {
		if (owner != "" && k.owner != owner) || len(c.vms) == 0 {
			continue
		}
		cl := api.Cluster{Name: k.name, Owner: k.owner}
		vms := cloneVMs(c.vms, false, nil)
		api.SortVMs(vms)
		for _, v := range vms {
			cl.VMs = append(cl.VMs, v.Name)
		}
		out = append(out, cl)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Owner != out[j].Owner {
			return out[i].Owner < out[j].Owner
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Domain implements StateView.
func (s *State) Domain() string { return s.domain }

// Counts returns the sizes of the state's lists.
func (s *State) Counts() api.Counts {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := api.Counts{VMs: len(s.vms), Lost: len(s.lost), Missing: len(s.missing), LNMs: len(s.lnms), Clusters: len(s.clusters),
		Connected: s.lnmsIn[api.LNMConnected], Unmanaged: s.unmanaged, Conflicts: s.conflicts}
	c.Running = s.running
	c.ByState = make(map[api.VMState]int, len(s.byState))
	for st, n := range s.byState {
		if n != 0 {
			c.ByState[st] = n
		}
	}
	return c
}

// LNMQuery selects placement candidates without copying every LNM.
type LNMQuery struct {
	Connected bool   // only connected LNMs
	MemMB     int    // only LNMs with at least this much free memory
	VCPUs     int    // and this many free vCPUs
	OrderBy   string // "load" (1-minute CPU per core, then free memory), "free_mem", "vms", or "" (name)
	Limit     int    // at most this many (0: all)
	Names     []string
	// Guaranteed counts VCPUs against what the node can still guarantee
	// (NodeStatus.FreeGuaranteedVCPUs): placement of a guaranteed VM.
	Guaranteed bool
	// Mode keeps only nodes in that mode; "" with Connected keeps only
	// nodes taking new VMs (active), "any" keeps every mode.
	Mode string
}

func lnmKey(l *api.LNM, by string) float64 {
	switch by {
	case "load":
		cpus := l.Info.CPUs
		if cpus < 1 {
			cpus = 1
		}
		// ties (idle nodes) go to the one with more free memory
		return l.Status.Usage.CPU.M1/float64(cpus) - float64(l.Status.FreeMemMB)*1e-12
	case "free_mem":
		return -float64(l.Status.FreeMemMB)
	case "vms":
		return float64(l.Status.VMs)
	}
	return 0
}

// match reports whether an LNM passes the query's filters.
func (q LNMQuery) match(l *api.LNM, only map[string]bool) bool {
	if only != nil && !only[l.Info.Name] {
		return false
	}
	if q.Connected && l.State != api.LNMConnected {
		return false
	}
	switch q.Mode {
	case "any":
	case "":
		if q.Connected && !l.Mode.Placeable() {
			return false
		}
	default:
		if string(l.Mode) != q.Mode {
			return false
		}
	}
	if q.Guaranteed {
		return l.Status.FreeMemMB >= q.MemMB && l.Status.FreeGuaranteedVCPUs >= q.VCPUs
	}
	return l.Status.FreeMemMB >= q.MemMB && l.Status.FreeVCPUs >= q.VCPUs
}

// guaranteeable is how many vCPUs a node can guarantee.
func guaranteeable(i api.NodeInfo) int {
	if i.GuaranteedCPUs > 0 && i.GuaranteedCPUs < i.CPUs {
		return i.GuaranteedCPUs
	}
	return i.CPUs
}

func (q LNMQuery) names() map[string]bool {
	if len(q.Names) == 0 {
		return nil
	}
	only := make(map[string]bool, len(q.Names))
	for _, n := range q.Names {
		only[n] = true
	}
	return only
}

// ranked is an LNM with its sort key computed once.
type ranked struct {
	key float64
	l   *api.LNM
}

func rankedCmp(a, b ranked) int {
	if a.key != b.key {
		if a.key < b.key {
			return -1
		}
		return 1
	}
	return strings.Compare(a.l.Info.Name, b.l.Info.Name)
}

// selector keeps the best LNMs of a query as they are offered: all of
// them, or with a limit only the best Limit in a bounded max-heap, so a
// query for the ten least loaded of 10,000 nodes costs O(n log 10), not a
// sort of all n.
type selector struct {
	q LNMQuery
	h []ranked
}

func (s *selector) add(l *api.LNM) {
	r := ranked{lnmKey(l, s.q.OrderBy), l}
	if s.q.Limit <= 0 || len(s.h) < s.q.Limit {
		s.h = append(s.h, r)
		if s.q.Limit > 0 {
			s.up(len(s.h) - 1)
		}
		return
	}
	if rankedCmp(r, s.h[0]) >= 0 {
		return // worse than the worst kept
	}
	s.h[0] = r
	s.down(0)
}

// up and down keep h a max-heap (the worst kept LNM at h[0]).
func (s *selector) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if rankedCmp(s.h[i], s.h[p]) <= 0 {
			return
		}
		s.h[i], s.h[p] = s.h[p], s.h[i]
		i = p
	}
}

func (s *selector) down(i int) {
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(s.h) && rankedCmp(s.h[l], s.h[m]) > 0 {
			m = l
		}
		if r < len(s.h) && rankedCmp(s.h[r], s.h[m]) > 0 {
			m = r
		}
		if m == i {
			return
		}
		s.h[i], s.h[m] = s.h[m], s.h[i]
		i = m
	}
}

// result returns the kept LNMs best first (by key, then name).
func (s *selector) result() []*api.LNM {
	slices.SortFunc(s.h, rankedCmp)
	out := make([]*api.LNM, len(s.h))
	for i, r := range s.h {
		out[i] = r.l
	}
	return out
}

// Apply runs the query over a plain list (for views without QueryLNMs).
func (q LNMQuery) Apply(all []*api.LNM) []*api.LNM {
	only := q.names()
	sel := selector{q: q}
	for _, l := range all {
		if q.match(l, only) {
			sel.add(l)
		}
	}
	return sel.result()
}

// State.slots hold what an LNM query reads of each record (name, CPUs,
// state, free memory and vCPUs, VM count, 1-minute CPU), copied into a
// slice that is scanned in order. A query for the best candidates among
// 10,000 nodes runs for every start request; chasing 10,000 records
// through the map cost a few cache misses each, more than the rest of the
// query.

// syncSlotLocked computes l's free capacity from what its VMs take and
// copies into l's slot what queries read, and keeps the count of LNMs in
// each state. Every change to those fields of a record calls it. The
// caller holds mu.
func (s *State) syncSlotLocked(l *lnmRec) {
	l.lnm.Status.FreeMemMB = l.lnm.Info.MemMB - l.usedMem - l.heldMem
	l.lnm.Status.FreeVCPUs = l.lnm.Info.CPUs - l.usedCPUs - l.heldCPUs
	l.lnm.Status.FreeGuaranteedVCPUs = min(guaranteeable(l.lnm.Info)-l.guaranteedCPUs, l.lnm.Status.FreeVCPUs)
	l.lnm.Status.VMs = l.active
	if l.slot == 0 {
		s.slots = append(s.slots, api.LNM{})
		l.slot = len(s.slots)
	}
	t := &s.slots[l.slot-1]
	t.Info.Name, t.Info.CPUs = l.lnm.Info.Name, l.lnm.Info.CPUs
	if t.State != l.lnm.State {
		if t.State != "" {
			s.lnmsIn[t.State]--
		}
		s.lnmsIn[l.lnm.State]++
	}
	t.State = l.lnm.State
	t.Mode = l.lnm.Mode
	t.Status.FreeMemMB, t.Status.FreeVCPUs, t.Status.VMs = l.lnm.Status.FreeMemMB, l.lnm.Status.FreeVCPUs, l.lnm.Status.VMs
	t.Status.FreeGuaranteedVCPUs = l.lnm.Status.FreeGuaranteedVCPUs
	t.Status.Usage.CPU.M1 = l.lnm.Status.Usage.CPU.M1
}

// QueryLNMs returns copies of the LNMs matching q, best first: one pass
// over the slots to filter and rank, copying only the records it returns.
func (s *State) QueryLNMs(q LNMQuery) []*api.LNM {
	only := q.names()
	sel := selector{q: q}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range s.slots {
		if t := &s.slots[i]; q.match(t, only) {
			sel.add(t)
		}
	}
	out := sel.result()
	for i, t := range out {
		cp := s.lnms[t.Info.Name].lnm
		out[i] = &cp
	}
	return out
}
