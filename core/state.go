package core

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type clusterKey struct{ owner, name string }

type clusterRec struct {
	vms  map[string]*VM
	next int // next index handed out for <cluster><index> names
}

type lnmRec struct {
	lnm       LNM
	link      LNMLink
	gen       uint64
	vms       map[string]*VM
	unmanaged map[string]*VM
	acks      *acker
	slot      int // 1 + its index in State.slots (0: none yet)
}

// State is the controller's global state: running VMs, LNMs, virtual
// clusters and the lost, missing and unmanaged lists, with indices so that
// no request scans every VM. All fields are guarded by mu.
type State struct {
	mu       sync.RWMutex
	domain   string
	vms      map[string]*VM
	owners   map[string]map[string]*VM
	clusters map[clusterKey]*clusterRec
	lnms     map[string]*lnmRec
	slots    []LNM // what LNM queries read, one scan (see syncSlotLocked)
	lost     map[string]*VM
	missing  map[string]*VM
	requests map[string][]*VM // owner\x00request id → VMs it created
	running  int              // VMs in state running: kept by insert, remove and setState, so Counts is O(1)
	// LNMs in each state, kept by syncSlotLocked: whether a restarted
	// controller is whole again is asked at every registration.
	lnmsIn    map[LNMState]int
	unmanaged int // entries of all LNMs' unmanaged lists
	// Sizes reserved for owners' and clusters' maps after a restart (see
	// Reserve), taken when their first VM is inserted.
	ownerHint   map[string]int
	clusterHint map[clusterKey]int
}

func newState(domain string) *State {
	return &State{
		domain:   domain,
		vms:      map[string]*VM{},
		owners:   map[string]map[string]*VM{},
		clusters: map[clusterKey]*clusterRec{},
		lnms:     map[string]*lnmRec{},
		lost:     map[string]*VM{},
		missing:  map[string]*VM{},
		requests: map[string][]*VM{},
		lnmsIn:   map[LNMState]int{},
	}
}

// indexOf parses the trailing index of short relative to cluster.
func indexOf(short, cluster string) (int, bool) {
	if !strings.HasPrefix(short, cluster) {
		return 0, false
	}
	n, err := strconv.Atoi(short[len(cluster):])
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// insertLocked adds a VM to every index. The caller holds mu.
func (s *State) insertLocked(vm *VM) bool {
	if _, ok := s.vms[vm.Name]; ok {
		return false
	}
	s.vms[vm.Name] = vm
	if vm.State == StateRunning {
		s.running++
	}
	o := s.owners[vm.Owner]
	if o == nil {
		o = s.ownerMapLocked(vm.Owner)
		s.owners[vm.Owner] = o
	}
	o[vm.Name] = vm
	k := clusterKey{vm.Owner, vm.Cluster}
	c := s.clusters[k]
	if c == nil {
		c = &clusterRec{vms: s.clusterMapLocked(k), next: 1}
		s.clusters[k] = c
	}
	c.vms[vm.Name] = vm
	if n, ok := indexOf(vm.Short, vm.Cluster); ok && n >= c.next {
		c.next = n + 1
	}
	if l := s.lnms[vm.LNM]; l != nil {
		l.vms[vm.Name] = vm
		if vm.State == StateStarting {
			// Reserve the capacity now: placement of the next request
			// must not see it free before the LNM's next report.
			l.lnm.Status.FreeMemMB -= vm.MemMB
			l.lnm.Status.FreeVCPUs -= vm.VCPUs
			l.lnm.Status.VMs++
			s.syncSlotLocked(l)
		}
	}
	s.trackListsLocked(vm)
	if vm.Request != "" {
		k := vm.Owner + "\x00" + vm.Request
		s.requests[k] = append(s.requests[k], vm)
	}
	return true
}

// removeLocked deletes a VM from every index.
func (s *State) removeLocked(vm *VM) {
	if s.vms[vm.Name] == vm && vm.State == StateRunning {
		s.running--
	}
	delete(s.vms, vm.Name)
	if o := s.owners[vm.Owner]; o != nil {
		delete(o, vm.Name)
		if len(o) == 0 {
			delete(s.owners, vm.Owner)
		}
	}
	k := clusterKey{vm.Owner, vm.Cluster}
	if c := s.clusters[k]; c != nil {
		delete(c.vms, vm.Name)
		if len(c.vms) == 0 {
			delete(s.clusters, k)
		}
	}
	if l := s.lnms[vm.LNM]; l != nil {
		delete(l.vms, vm.Name)
		switch vm.State {
		case StateStarting, StateFailed, StateDestroyed:
			// give back what insertLocked reserved or the VM used; the
			// LNM's next report corrects any estimate
			l.lnm.Status.FreeMemMB += vm.MemMB
			l.lnm.Status.FreeVCPUs += vm.VCPUs
			if l.lnm.Status.VMs > 0 {
				l.lnm.Status.VMs--
			}
			s.syncSlotLocked(l)
		}
	}
	delete(s.lost, vm.Name)
	delete(s.missing, vm.Name)
	if vm.Request != "" {
		k := vm.Owner + "\x00" + vm.Request
		list := s.requests[k]
		for i, v := range list {
			if v == vm {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(s.requests, k)
		} else {
			s.requests[k] = list
		}
	}
}

// moveLocked re-homes a VM on another LNM.
func (s *State) moveLocked(vm *VM, lnm string) {
	if l := s.lnms[vm.LNM]; l != nil {
		delete(l.vms, vm.Name)
	}
	vm.LNM = lnm
	if l := s.lnms[lnm]; l != nil {
		l.vms[vm.Name] = vm
	}
}

// setStateLocked changes a VM's state, keeping the lost/missing lists.
// It reports whether anything changed.
func (s *State) setStateLocked(vm *VM, st VMState, reason string) bool {
	if vm.State == st && vm.Reason == reason {
		return false
	}
	if s.vms[vm.Name] == vm {
		if vm.State == StateRunning {
			s.running--
		}
		if st == StateRunning {
			s.running++
		}
	}
	vm.State = st
	vm.Reason = reason
	vm.Version++
	s.trackListsLocked(vm)
	return true
}

func (s *State) trackListsLocked(vm *VM) {
	if vm.State == StateLost {
		s.lost[vm.Name] = vm
	} else {
		delete(s.lost, vm.Name)
	}
	if vm.State == StateMissing {
		s.missing[vm.Name] = vm
	} else {
		delete(s.missing, vm.Name)
	}
}

// allocLocked reserves count fresh short names in a cluster.
func (s *State) allocLocked(owner, cluster string, count int) []string {
	k := clusterKey{owner, cluster}
	c := s.clusters[k]
	if c == nil {
		c = &clusterRec{vms: map[string]*VM{}, next: 1}
		s.clusters[k] = c
	}
	out := make([]string, 0, count)
	for len(out) < count {
		short := cluster + strconv.Itoa(c.next)
		c.next++
		if _, taken := s.vms[FullName(short, owner, s.domain)]; taken {
			continue
		}
		out = append(out, short)
	}
	return out
}

// dropEmptyClusterLocked forgets a cluster record that allocation created
// but no VM joined.
func (s *State) dropEmptyClusterLocked(owner, cluster string) {
	k := clusterKey{owner, cluster}
	if c := s.clusters[k]; c != nil && len(c.vms) == 0 {
		delete(s.clusters, k)
	}
}

// cloneVMs copies the VMs of m that keep accepts, in no order; the caller
// holds mu (for reading) and sorts the copies with sortVMs after releasing
// it, so a long list does not hold writers off while it is sorted.
func cloneVMs(m map[string]*VM, withUsage bool, keep func(*VM) bool) []*VM {
	out := make([]*VM, 0, len(m))
	for _, v := range m {
		if keep != nil && !keep(v) {
			continue
		}
		c := *v
		c.Data = cloneMap(v.Data)
		c.Usage = nil
		if withUsage && v.Usage != nil {
			u := *v.Usage
			c.Usage = &u
		}
		out = append(out, &c)
	}
	return out
}

// SortVMs orders VMs as list replies are: by owner, cluster, then natural
// index, then name (for a list put together from pages).
func SortVMs(vms []*VM) { sortVMs(vms) }

// sortVMs orders VMs by owner, cluster, then natural index (web2 before
// web10), then name. Owners and clusters are ranked once and indexes
// parsed once, so a list of a million VMs sorts on integers.
func sortVMs(vms []*VM) {
	if len(vms) < 2 {
		return
	}
	type key struct {
		owner, cluster int32
		idx            int
		ok             bool
		v              *VM
	}
	owners, clusters := map[string]int32{}, map[string]int32{}
	for _, v := range vms {
		owners[v.Owner] = 0
		clusters[v.Cluster] = 0
	}
	rank := func(m map[string]int32) {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.Sort(names)
		for i, n := range names {
			m[n] = int32(i)
		}
	}
	rank(owners)
	rank(clusters)
	keys := make([]key, len(vms))
	for i, v := range vms {
		n, ok := indexOf(v.Short, v.Cluster)
		keys[i] = key{owners[v.Owner], clusters[v.Cluster], n, ok, v}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.owner != b.owner {
			return int(a.owner - b.owner)
		}
		if a.cluster != b.cluster {
			return int(a.cluster - b.cluster)
		}
		if a.ok && b.ok && a.idx != b.idx {
			if a.idx < b.idx {
				return -1
			}
			return 1
		}
		return strings.Compare(a.v.Name, b.v.Name)
	})
	for i := range keys {
		vms[i] = keys[i].v
	}
}

// --- StateView implementation ---

// VM implements StateView.
func (s *State) VM(name string) (*VM, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.vms[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

// VMsOf implements StateView.
func (s *State) VMsOf(owner, cluster string) []*VM {
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
	sortVMs(out)
	return out
}

// VMsOn implements StateView.
func (s *State) VMsOn(lnm string) []*VM {
	s.mu.RLock()
	l := s.lnms[lnm]
	if l == nil {
		s.mu.RUnlock()
		return nil
	}
	out := cloneVMs(l.vms, true, nil)
	s.mu.RUnlock()
	sortVMs(out)
	return out
}

// CountOf implements StateView.
func (s *State) CountOf(owner string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.owners[owner])
}

// LNM implements StateView.
func (s *State) LNM(name string) (*LNM, bool) {
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
	return l != nil && l.lnm.State == LNMConnected
}

// LNMs implements StateView.
func (s *State) LNMs() []*LNM {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*LNM, 0, len(s.lnms))
	for _, l := range s.lnms {
		c := l.lnm
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Name < out[j].Info.Name })
	return out
}

// Clusters implements StateView.
func (s *State) Clusters(owner string) []Cluster {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Cluster
	for k, c := range s.clusters {
		if (owner != "" && k.owner != owner) || len(c.vms) == 0 {
			continue
		}
		cl := Cluster{Name: k.name, Owner: k.owner}
		vms := cloneVMs(c.vms, false, nil)
		sortVMs(vms)
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

// Counts summarises the state (for status and benchmarks).
type Counts struct {
	VMs       int `json:"vms"`
	Running   int `json:"running"`
	Lost      int `json:"lost"`
	Missing   int `json:"missing"`
	Unmanaged int `json:"unmanaged"`
	LNMs      int `json:"lnms"`
	Connected int `json:"connected"`
	Clusters  int `json:"clusters"`
}

// Counts returns the sizes of the state's lists.
func (s *State) Counts() Counts {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := Counts{VMs: len(s.vms), Lost: len(s.lost), Missing: len(s.missing), LNMs: len(s.lnms), Clusters: len(s.clusters),
		Connected: s.lnmsIn[LNMConnected], Unmanaged: s.unmanaged}
	c.Running = s.running
	return c
}

func now() time.Time { return time.Now().UTC() }

// LNMQuery selects placement candidates without copying every LNM.
type LNMQuery struct {
	Connected bool   // only connected LNMs
	MemMB     int    // only LNMs with at least this much free memory
	VCPUs     int    // and this many free vCPUs
	OrderBy   string // "load" (1-minute CPU per core, then free memory), "free_mem", "vms", or "" (name)
	Limit     int    // at most this many (0: all)
	Names     []string
}

func lnmKey(l *LNM, by string) float64 {
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
func (q LNMQuery) match(l *LNM, only map[string]bool) bool {
	if only != nil && !only[l.Info.Name] {
		return false
	}
	if q.Connected && l.State != LNMConnected {
		return false
	}
	return l.Status.FreeMemMB >= q.MemMB && l.Status.FreeVCPUs >= q.VCPUs
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
	l   *LNM
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

func (s *selector) add(l *LNM) {
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
func (s *selector) result() []*LNM {
	slices.SortFunc(s.h, rankedCmp)
	out := make([]*LNM, len(s.h))
	for i, r := range s.h {
		out[i] = r.l
	}
	return out
}

// Apply runs the query over a plain list (for views without QueryLNMs).
func (q LNMQuery) Apply(all []*LNM) []*LNM {
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

// syncSlotLocked copies into l's slot what queries read, and keeps the
// count of LNMs in each state. Every change to those fields of a record
// calls it. The caller holds mu.
func (s *State) syncSlotLocked(l *lnmRec) {
	if l.slot == 0 {
		s.slots = append(s.slots, LNM{})
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
	t.Status.FreeMemMB, t.Status.FreeVCPUs, t.Status.VMs = l.lnm.Status.FreeMemMB, l.lnm.Status.FreeVCPUs, l.lnm.Status.VMs
	t.Status.Usage.CPU.M1 = l.lnm.Status.Usage.CPU.M1
}

// QueryLNMs returns copies of the LNMs matching q, best first: one pass
// over the slots to filter and rank, copying only the records it returns.
func (s *State) QueryLNMs(q LNMQuery) []*LNM {
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
