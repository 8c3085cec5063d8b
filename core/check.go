package core

import (
	"errors"
	"fmt"

	"github.com/usher-vm/usher/api"
)

// Check verifies the state's invariants: every index (owners, clusters,
// nodes, requests, lost and missing lists) holds exactly the VMs it should,
// every count matches, and each node's free capacity is its size less what
// its VMs (and unmanaged guests) take. Tests and fuzzers call it after any
// sequence of operations; it costs a pass over the whole state.
func (s *State) Check() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var errs []error
	fail := func(format string, args ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	running, inOwners, inClusters, inNodes, inRequests := 0, 0, 0, 0, 0
	for name, vm := range s.vms {
		if vm.Name != name {
			fail("vms[%q] holds %q", name, vm.Name)
		}
		if vm.State == api.StateRunning {
			running++
		}
		if s.owners[vm.Owner][name] != vm {
			fail("%s missing from owner %q's index", name, vm.Owner)
		}
		if c := s.clusters[clusterKey{vm.Owner, vm.Cluster}]; c == nil || c.vms[name] != vm {
			fail("%s missing from cluster %s/%s", name, vm.Owner, vm.Cluster)
		}
		if l := s.lnms[vm.LNM]; l == nil || l.vms[name] != vm {
			fail("%s missing from node %q's index", name, vm.LNM)
		}
		if (vm.State == api.StateLost) != (s.lost[name] == vm) {
			fail("%s (%s) and the lost list disagree", name, vm.State)
		}
		if (vm.State == api.StateMissing) != (s.missing[name] == vm) {
			fail("%s (%s) and the missing list disagree", name, vm.State)
		}
		if vm.Request != "" {
			n := 0
			for _, v := range s.requests[vm.Owner+"\x00"+vm.Request] {
				if v == vm {
					n++
				}
			}
			if n != 1 {
				fail("%s is %d times in its request's index", name, n)
			}
		}
	}
	if running != s.running {
		fail("running count %d, %d VMs running", s.running, running)
	}
	per := map[api.VMState]int{}
	for _, vm := range s.vms {
		per[vm.State]++
	}
	for st, n := range s.byState {
		if per[st] != n {
			fail("%d VMs counted %s, %d are", n, st, per[st])
		}
	}
	for st, n := range per {
		if s.byState[st] != n {
			fail("%d VMs counted %s, %d are", s.byState[st], st, n)
		}
	}
	for o, m := range s.owners {
		if len(m) == 0 {
			fail("owner %q has an empty index", o)
		}
		inOwners += len(m)
	}
	for k, c := range s.clusters {
		inClusters += len(c.vms)
		for n, v := range c.vms {
			if s.vms[n] != v || v.Owner != k.owner || v.Cluster != k.name {
				fail("cluster %s/%s holds %s wrongly", k.owner, k.name, n)
			}
		}
	}
	for _, list := range s.requests {
		inRequests += len(list)
	}
	requested := 0
	for _, vm := range s.vms {
		if vm.Request != "" {
			requested++
		}
	}
	if inRequests != requested {
		fail("request index holds %d VMs, %d have a request id", inRequests, requested)
	}
	if len(s.lost) != countState(s.vms, api.StateLost) || len(s.missing) != countState(s.vms, api.StateMissing) {
		fail("lost/missing lists hold %d/%d VMs", len(s.lost), len(s.missing))
	}
	states := map[api.LNMState]int{}
	unmanaged, conflicts := 0, 0
	for name, l := range s.lnms {
		inNodes += len(l.vms)
		states[l.lnm.State]++
		unmanaged += len(l.unmanaged)
		conflicts += len(l.conflicts)
		mem, cpus, active, gcpus := 0, 0, 0, 0
		take := func(v *api.VM) {
			if consumes(v.State) {
				mem += v.MemMB
				cpus += v.VCPUs
				active++
				if api.Guaranteed(v.Data) {
					gcpus += v.VCPUs
				}
			}
		}
		for n, v := range l.vms {
			if s.vms[n] != v || v.LNM != name {
				fail("node %s holds %s wrongly", name, n)
			}
			take(v)
		}
		for _, u := range l.unmanaged {
			take(u)
		}
		if mem != l.usedMem || cpus != l.usedCPUs || active != l.active {
			fail("node %s: VMs take %d MiB, %d vCPUs, %d VMs; its record says %d, %d, %d", name, mem, cpus, active, l.usedMem, l.usedCPUs, l.active)
		}
		// What its active reservations hold, from their VMs on it.
		hmem, hcpus := 0, 0
		for _, rr := range l.res {
			if s.reservations[rr.r.ID] != rr {
				fail("node %s holds for a reservation %s the state does not list", name, rr.r.ID)
			}
			if !rr.active {
				continue
			}
			um, uc := 0, 0
			for _, v := range rr.vms {
				if v.LNM == name && consumes(v.State) && s.vms[v.Name] == v {
					um += v.MemMB
					uc += v.VCPUs
				}
			}
			hmem += max(rr.r.MemMB-um, 0)
			hcpus += max(rr.r.VCPUs-uc, 0)
		}
		if hmem != l.heldMem || hcpus != l.heldCPUs {
			fail("node %s: reservations hold %d MiB, %d vCPUs; its record says %d, %d", name, hmem, hcpus, l.heldMem, l.heldCPUs)
		}
		mem += hmem
		cpus += hcpus
		if gcpus != l.guaranteedCPUs || l.lnm.Status.FreeGuaranteedVCPUs != min(guaranteeable(l.lnm.Info)-gcpus, l.lnm.Info.CPUs-cpus) {
			fail("node %s: guaranteed VMs take %d vCPUs, its record says %d (free to guarantee %d)", name, gcpus, l.guaranteedCPUs, l.lnm.Status.FreeGuaranteedVCPUs)
		}
		if l.lnm.Status.FreeMemMB != l.lnm.Info.MemMB-mem || l.lnm.Status.FreeVCPUs != l.lnm.Info.CPUs-cpus {
			fail("node %s: free %d MiB, %d vCPUs; size %d, %d less what its VMs take is %d, %d", name,
				l.lnm.Status.FreeMemMB, l.lnm.Status.FreeVCPUs, l.lnm.Info.MemMB, l.lnm.Info.CPUs, l.lnm.Info.MemMB-mem, l.lnm.Info.CPUs-cpus)
		}
		if l.lnm.Mode == api.ModeDraining && l.active == 0 && l.lnm.State == api.LNMConnected && !l.attaching {
			fail("node %s is draining with no VM left: it should be in maintenance", name)
		}
		if l.slot < 1 || l.slot > len(s.slots) {
			fail("node %s has no query slot", name)
			continue
		}
		t := s.slots[l.slot-1]
		if t.Info.Name != name || t.State != l.lnm.State || t.Status.FreeMemMB != l.lnm.Status.FreeMemMB ||
			t.Status.FreeVCPUs != l.lnm.Status.FreeVCPUs || t.Status.VMs != l.lnm.Status.VMs || t.Mode != l.lnm.Mode ||
			t.Status.FreeGuaranteedVCPUs != l.lnm.Status.FreeGuaranteedVCPUs {
			fail("node %s: its query slot disagrees with its record", name)
		}
	}
	if inOwners != len(s.vms) || inClusters != len(s.vms) || inNodes != len(s.vms) {
		fail("%d VMs; owner indices hold %d, cluster indices %d, node indices %d", len(s.vms), inOwners, inClusters, inNodes)
	}
	for st, n := range states {
		if s.lnmsIn[st] != n {
			fail("%d nodes %s, counted %d", n, st, s.lnmsIn[st])
		}
	}
	if unmanaged != s.unmanaged || conflicts != s.conflicts {
		fail("unmanaged %d (counted %d), conflicts %d (counted %d)", unmanaged, s.unmanaged, conflicts, s.conflicts)
	}
	if len(s.slots) != len(s.lnms) {
		fail("%d query slots for %d nodes", len(s.slots), len(s.lnms))
	}
	return errors.Join(errs...)
}

func countState(m map[string]*api.VM, st api.VMState) int {
	n := 0
	for _, v := range m {
		if v.State == st {
			n++
		}
	}
	return n
}
