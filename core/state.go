package core

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
)

type clusterKey struct{ owner, name string }

type clusterRec struct {
	vms  map[string]*api.VM
	next int // next index handed out for <cluster><index> names
}

type lnmRec struct {
	lnm       api.LNM
	link      api.Node
	gen       uint64
	vms       map[string]*api.VM
	unmanaged map[string]*api.VM
	// conflicts are VMs this node reported that another connected node
	// holds: the copy it reported, kept out of the VM index.
	conflicts map[string]*api.VM
	acks      *acker
	slot      int  // 1 + its index in State.slots (0: none yet)
	known     bool // known from before a restart (ExpectLNMs)
	attached  bool // has registered with this controller
	attaching bool // its registration is being applied (its VMs not all counted yet)
	// stale names VMs recorded elsewhere whose copy on this node is known
	// to be stale (restarted elsewhere after a fence, or migrated away
	// while this node could not confirm it let go): destroyed if it
	// reports them.
	stale map[string]bool
	// What the node's VMs take of it (see consumes), kept by every
	// change: its free capacity is its size less this.
	usedMem, usedCPUs, active int
	// guaranteedCPUs is what its guaranteed VMs (data qos=guaranteed) take.
	guaranteedCPUs int
	// res are the reservations held on it; heldMem and heldCPUs what
	// the active ones hold that their VMs do not take (see holdLocked).
	res               []*resRec
	heldMem, heldCPUs int
}

// State is the controller's global state: running VMs, LNMs, virtual
// clusters and the lost, missing, unmanaged and conflict lists, with
// indices so that no request scans every VM. All fields are guarded by mu,
// which is always released with defer (a panic leaves it free). Check
// verifies every index and count against the VMs.
type State struct {
	mu       sync.RWMutex
	domain   string
	vms      map[string]*api.VM
	owners   map[string]map[string]*api.VM
	clusters map[clusterKey]*clusterRec
	lnms     map[string]*lnmRec
	slots    []api.LNM // what LNM queries read, one scan (see syncSlotLocked)
	lost     map[string]*api.VM
	missing  map[string]*api.VM
	requests map[string][]*api.VM // owner\x00request id → VMs it created
	running  int                  // VMs in state running: kept by insert, remove and setState, so Counts is O(1)
	byState  map[api.VMState]int  // VMs per state, kept the same way (metrics)
	// LNMs in each state, kept by syncSlotLocked: whether a restarted
	// controller is whole again is asked at every registration.
	lnmsIn    map[api.LNMState]int
	unmanaged int // entries of all LNMs' unmanaged lists
	conflicts int // entries of all LNMs' conflict lists
	// Sizes reserved for owners' and clusters' maps after a restart (see
	// Reserve), taken when their first VM is inserted.
	ownerHint   map[string]int
	clusterHint map[clusterKey]int
	// Node modes kept from before a restart for nodes with no record yet
	// (RestoreModes), and the lnm_mode events of automatic changes (a
	// drained node entering maintenance) not yet emitted (flushModes).
	reservations map[string]*resRec
	savedModes   map[string]ModeRecord
	modeEvents   []api.Event
	modePending  atomic.Bool
}

func newState(domain string) *State {
	return &State{
		domain:   domain,
		vms:      map[string]*api.VM{},
		owners:   map[string]map[string]*api.VM{},
		clusters: map[clusterKey]*clusterRec{},
		lnms:     map[string]*lnmRec{},
		lost:     map[string]*api.VM{},
		missing:  map[string]*api.VM{},
		requests: map[string][]*api.VM{},
		lnmsIn:   map[api.LNMState]int{},
		byState:  map[api.VMState]int{},
	}
}

// write runs f under the write lock; read under the read lock.
func (s *State) write(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *State) read(f func()) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f()
}

// consumes reports whether a VM in state st takes its node's memory and
// CPUs: from the moment it is registered (so placement of the next request
// sees them taken) until it is shut off, hibernated, destroyed, failed or
// gone. A lost VM's node is disconnected: its capacity is not offered.
func consumes(st api.VMState) bool {
	switch st {
	case api.StatePending, api.StateStarting, api.StateRunning, api.StatePaused, api.StateMigrating, api.StateLost:
		return true
	}
	return false
}

// chargeLocked adds (sign 1) or gives back (-1) what vm takes of node l.
func (s *State) chargeLocked(l *lnmRec, vm *api.VM, sign int) {
	if l == nil || !consumes(vm.State) {
		return
	}
	l.usedMem += sign * vm.MemMB
	l.usedCPUs += sign * vm.VCPUs
	l.active += sign
	if api.Guaranteed(vm.Data) {
		l.guaranteedCPUs += sign * vm.VCPUs
	}
	if vm.Data[api.DataReservation] != "" {
		s.chargeReservationLocked(l, vm, sign)
	}
	s.syncSlotLocked(l)
	if sign < 0 && l.active == 0 {
		s.drainedLocked(l)
	}
}

// lnmLocked returns the record of a node, making an empty one (an
// expected node's, until it registers).
func (s *State) lnmLocked(name string) *lnmRec {
	l := s.lnms[name]
	if l == nil {
		l = &lnmRec{vms: map[string]*api.VM{}, unmanaged: map[string]*api.VM{}, conflicts: map[string]*api.VM{}}
		l.lnm.Info.Name = name
		l.lnm.Mode = api.ModeActive
		if r, ok := s.savedModes[name]; ok {
			setModeLocked(l, r)
			delete(s.savedModes, name)
		}
		s.lnms[name] = l
	}
	return l
}

// insertLocked adds a VM to every index. The caller holds mu; vm.LNM
// names a known node.
func (s *State) insertLocked(vm *api.VM) bool {
	if _, ok := s.vms[vm.Name]; ok {
		return false
	}
	s.vms[vm.Name] = vm
	if vm.State == api.StateRunning {
		s.running++
	}
	s.byState[vm.State]++
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
	if n, ok := api.ClusterIndex(vm.Short, vm.Cluster); ok && n >= c.next && n < 1<<40 {
		c.next = n + 1
	}
	l := s.lnmLocked(vm.LNM)
	l.vms[vm.Name] = vm
	s.chargeLocked(l, vm, 1)
	s.trackListsLocked(vm)
	if rr := s.reservationOf(vm); rr != nil {
		rr.vms[vm.Name] = vm
	}
	if vm.Request != "" {
		k := vm.Owner + "\x00" + vm.Request
		s.requests[k] = append(s.requests[k], vm)
	}
	return true
}

// removeLocked deletes a VM from every index and gives back what it took
// of its node.
func (s *State) removeLocked(vm *api.VM) {
	if s.vms[vm.Name] != vm {
		return
	}
	if vm.State == api.StateRunning {
		s.running--
	}
	s.byState[vm.State]--
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
		s.chargeLocked(l, vm, -1)
	}
	delete(s.lost, vm.Name)
	delete(s.missing, vm.Name)
	if rr := s.reservationOf(vm); rr != nil {
		delete(rr.vms, vm.Name)
	}
	if vm.Request != "" {
		k := vm.Owner + "\x00" + vm.Request
		list := s.requests[k]
		if i := slices.Index(list, vm); i >= 0 {
			list = slices.Delete(list, i, i+1)
		}
		if len(list) == 0 {
			delete(s.requests, k)
		} else {
			s.requests[k] = list
		}
	}
}

// moveLocked re-homes a VM on another LNM.
func (s *State) moveLocked(vm *api.VM, lnm string) {
	if vm.LNM == lnm {
		return
	}
	if l := s.lnms[vm.LNM]; l != nil {
		delete(l.vms, vm.Name)
		s.chargeLocked(l, vm, -1)
	}
	vm.LNM = lnm
	l := s.lnmLocked(lnm)
	l.vms[vm.Name] = vm
	delete(l.stale, vm.Name)
	s.chargeLocked(l, vm, 1)
}

// setStateLocked changes a VM's state, keeping the lists, counts and its
// node's capacity. It reports whether anything changed.
func (s *State) setStateLocked(vm *api.VM, st api.VMState, reason string) bool {
	if vm.State == st && vm.Reason == reason {
		return false
	}
	indexed := s.vms[vm.Name] == vm
	if indexed {
		if vm.State == api.StateRunning {
			s.running--
		}
		if st == api.StateRunning {
			s.running++
		}
		s.byState[vm.State]--
		s.byState[st]++
	}
	var l *lnmRec
	if indexed && consumes(vm.State) != consumes(st) {
		l = s.lnms[vm.LNM]
		s.chargeLocked(l, vm, -1)
	}
	vm.State = st
	vm.Reason = reason
	vm.Version++
	s.chargeLocked(l, vm, 1)
	if indexed {
		s.trackListsLocked(vm)
	}
	return true
}

func (s *State) trackListsLocked(vm *api.VM) {
	if vm.State == api.StateLost {
		s.lost[vm.Name] = vm
	} else {
		delete(s.lost, vm.Name)
	}
	if vm.State == api.StateMissing {
		s.missing[vm.Name] = vm
	} else {
		delete(s.missing, vm.Name)
	}
}

// setUnmanagedLocked records (or with st "" removes) an unmanaged guest of
// node l, keeping the capacity it takes.
func (s *State) setUnmanagedLocked(l *lnmRec, g api.Guest) (added bool) {
	u := l.unmanaged[g.Name]
	if u != nil {
		s.chargeLocked(l, u, -1)
	}
	if g.State == "" || g.State == api.StateMissing || g.State == api.StateDestroyed {
		if u != nil {
			delete(l.unmanaged, g.Name)
			s.unmanaged--
		}
		return false
	}
	if u == nil {
		u = &api.VM{Name: g.Name, LNM: l.lnm.Info.Name, Unmanage: true, Created: now()}
		l.unmanaged[g.Name] = u
		s.unmanaged++
		added = true
	}
	u.State, u.Reason, u.MemMB, u.VCPUs = g.State, g.Reason, g.MemMB, g.VCPUs
	s.chargeLocked(l, u, 1)
	return added
}

// clearUnmanagedLocked drops node l's unmanaged list.
func (s *State) clearUnmanagedLocked(l *lnmRec) map[string]*api.VM {
	old := l.unmanaged
	for _, u := range old {
		s.chargeLocked(l, u, -1)
	}
	s.unmanaged -= len(old)
	l.unmanaged = map[string]*api.VM{}
	return old
}

// setConflictLocked records (or with gone, removes) node l's copy of a VM
// another connected node holds. It reports whether it is new.
func (s *State) setConflictLocked(l *lnmRec, g api.Guest, gone bool, holder string) bool {
	old := l.conflicts[g.Name]
	if gone {
		if old != nil {
			delete(l.conflicts, g.Name)
			s.conflicts--
		}
		return false
	}
	added := old == nil
	if added {
		old = &api.VM{Name: g.Name, LNM: l.lnm.Info.Name, Created: now()}
		l.conflicts[g.Name] = old
		s.conflicts++
	}
	old.State, old.MemMB, old.VCPUs = g.State, g.MemMB, g.VCPUs
	old.Reason = "reported by " + l.lnm.Info.Name + " while " + holder + " holds it"
	return added
}

// clearConflictsLocked drops node l's conflict list.
func (s *State) clearConflictsLocked(l *lnmRec) {
	s.conflicts -= len(l.conflicts)
	l.conflicts = map[string]*api.VM{}
}

// allocLocked reserves count fresh short names in a cluster. It fails when
// the names would not fit a DNS label.
func (s *State) allocLocked(owner, cluster string, count int) ([]string, bool) {
	k := clusterKey{owner, cluster}
	c := s.clusters[k]
	if c == nil {
		c = &clusterRec{vms: map[string]*api.VM{}, next: 1}
		s.clusters[k] = c
	}
	if !api.IndexFits(cluster, c.next+count) {
		return nil, false
	}
	out := make([]string, 0, count)
	for len(out) < count {
		short := cluster + strconv.Itoa(c.next)
		c.next++
		if _, taken := s.vms[api.FullName(short, owner, s.domain)]; taken {
			continue
		}
		out = append(out, short)
	}
	return out, true
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
// holds mu (for reading) and sorts the copies after releasing it, so a long
// list does not hold writers off while it is sorted.
func cloneVMs(m map[string]*api.VM, withUsage bool, keep func(*api.VM) bool) []*api.VM {
	out := make([]*api.VM, 0, len(m))
	for _, v := range m {
		if keep != nil && !keep(v) {
			continue
		}
		c := *v
		c.Data = maps.Clone(v.Data)
		c.Usage = nil
		if withUsage && v.Usage != nil {
			u := *v.Usage
			c.Usage = &u
		}
		out = append(out, &c)
	}
	return out
}

// CountIn counts the LNMs in one connection state.
func (s *State) CountIn(st api.LNMState) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.lnmsIn[st]
}

func now() time.Time { return time.Now().UTC() }

// clusterOwner splits an "owner/cluster" hint key.
func clusterOwner(k string) (owner, cluster string, ok bool) { return strings.Cut(k, "/") }
