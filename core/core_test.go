package core

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
)

func TestStateIndicesAndRequestIDs(t *testing.T) {
	s := newState("usher.local")
	vm := &api.VM{Name: api.FullName("web1", "alice", "usher.local"), Short: "web1", Owner: "alice", Cluster: "web", LNM: "n1", State: api.StateRunning, Request: "r1"}
	s.mu.Lock()
	if !s.insertLocked(vm) || s.insertLocked(vm) {
		t.Fatal("insert / duplicate insert")
	}
	names, _ := s.allocLocked("alice", "web", 2)
	s.mu.Unlock()
	if names[0] != "web2" || names[1] != "web3" {
		t.Fatalf("alloc after web1: %v", names)
	}
	if s.CountOf("alice") != 1 || len(s.VMsOf("alice", "web")) != 1 || len(s.requests["alice\x00r1"]) != 1 {
		t.Fatal("indices")
	}
	s.mu.Lock()
	s.setStateLocked(vm, api.StateLost, "x")
	s.mu.Unlock()
	if len(s.lost) != 1 {
		t.Fatal("lost list")
	}
	s.mu.Lock()
	s.removeLocked(vm)
	s.mu.Unlock()
	if len(s.vms)+len(s.lost)+len(s.owners)+len(s.requests) != 0 {
		t.Fatal("remove left entries behind")
	}
}

// TestLNMQueryKeepsTheBest: a limited query returns exactly the first
// Limit LNMs of the full ordering (key, then name), for many random sites
// with ties.
func TestLNMQueryKeepsTheBest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		n := rng.IntN(300)
		var all []*api.LNM
		for i := 0; i < n; i++ {
			l := &api.LNM{Info: api.NodeInfo{Name: fmt.Sprintf("n%03d", rng.IntN(1000)*1000+i), CPUs: 1 + rng.IntN(4)}, State: api.LNMConnected}
			l.Status.FreeMemMB = rng.IntN(4) * 1024 // many ties
			l.Status.FreeVCPUs = rng.IntN(8)
			l.Status.VMs = rng.IntN(3)
			l.Status.Usage.CPU.M1 = float64(rng.IntN(3)) / 2
			all = append(all, l)
		}
		for _, by := range []string{"load", "free_mem", "vms", ""} {
			full := LNMQuery{OrderBy: by, VCPUs: 1}.Apply(all)
			for i := 1; i < len(full); i++ {
				a, b := full[i-1], full[i]
				ka, kb := lnmKey(a, by), lnmKey(b, by)
				if ka > kb || (ka == kb && a.Info.Name >= b.Info.Name) {
					t.Fatalf("order %q: %s before %s", by, a.Info.Name, b.Info.Name)
				}
			}
			for _, limit := range []int{1, 2, 7, 50, n + 5} {
				got := LNMQuery{OrderBy: by, VCPUs: 1, Limit: limit}.Apply(all)
				want := full[:min(limit, len(full))]
				if len(got) != len(want) {
					t.Fatalf("limit %d of %d by %q: %d returned, want %d", limit, len(full), by, len(got), len(want))
				}
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("limit %d by %q: position %d is %s, want %s", limit, by, i, got[i].Info.Name, want[i].Info.Name)
					}
				}
			}
		}
	}
}

// TestRunningCountKeptInStep: the running counter behind Counts equals a
// count over every VM after any sequence of inserts, state changes and
// removals.
func TestRunningCountKeptInStep(t *testing.T) {
	s := newState("usher.local")
	rng := rand.New(rand.NewPCG(3, 4))
	states := []api.VMState{api.StateStarting, api.StateRunning, api.StatePaused, api.StateLost, api.StateRunning, api.StateShutoff}
	var vms []*api.VM
	for i := 0; i < 2000; i++ {
		s.mu.Lock()
		switch op := rng.IntN(3); {
		case op == 0 || len(vms) == 0:
			v := &api.VM{Name: api.FullName(fmt.Sprintf("c%d", i), "alice", "usher.local"), Short: fmt.Sprintf("c%d", i), Owner: "alice",
				Cluster: "c", State: states[rng.IntN(len(states))]}
			if s.insertLocked(v) {
				vms = append(vms, v)
			}
		case op == 1:
			s.setStateLocked(vms[rng.IntN(len(vms))], states[rng.IntN(len(states))], fmt.Sprint(i))
		default:
			j := rng.IntN(len(vms))
			s.removeLocked(vms[j])
			s.removeLocked(vms[j]) // twice: no double count
			vms = append(vms[:j], vms[j+1:]...)
		}
		want := 0
		for _, v := range s.vms {
			if v.State == api.StateRunning {
				want++
			}
		}
		s.mu.Unlock()
		if got := s.Counts().Running; got != want {
			t.Fatalf("step %d: Counts says %d running, %d are", i, got, want)
		}
	}
}

// TestLNMQuerySlotsKeptInStep: the slots LNM queries scan, the counts of
// LNMs in each state and of unmanaged VMs, agree with the records after any sequence of
// registrations, reports, disconnections, recovery bookkeeping and VM
// reservations: a query over the state returns what the same query over a
// plain list of the records returns.
func TestLNMQuerySlotsKeptInStep(t *testing.T) {
	c := New(Config{Domain: "usher.test"}, allowHooks{})
	rng := rand.New(rand.NewPCG(5, 6))
	gens := map[string]uint64{}
	var vms []*api.VM
	name := func() string { return fmt.Sprintf("n%02d", rng.IntN(40)) }
	status := func() *api.NodeStatus {
		st := &api.NodeStatus{}
		st.Usage.CPU.M1 = float64(rng.IntN(3)) / 2
		return st
	}
	for step := 0; step < 3000; step++ {
		switch op := rng.IntN(8); op {
		case 0: // (re)registration, with some VMs Usher does not manage
			n := name()
			var doms []api.Guest
			for i := range rng.IntN(3) {
				doms = append(doms, api.Guest{Name: fmt.Sprintf("guest%d", i), State: api.StateRunning})
			}
			g, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: n, CPUs: 1 + rng.IntN(4), MemMB: 1024 * rng.IntN(8)}, Status: *status()},
				apitest.NewNode(n), doms)
			if err != nil {
				t.Fatal(err)
			}
			gens[n] = g
		case 1: // a usage report
			if n := name(); gens[n] != 0 {
				c.HandleReport(n, gens[n], api.Report{Node: status()})
			}
		case 2: // a disconnection
			if n := name(); gens[n] != 0 {
				c.DetachLNM(n, gens[n], "test")
				gens[n] = 0
			}
		case 3: // recovery bookkeeping
			c.ExpectLNMs([]api.NodeInfo{{Name: name(), CPUs: 2}})
			if rng.IntN(10) == 0 {
				c.EndGrace()
			}
		case 4, 5: // a VM placed (capacity reserved while it starts)
			vm := &api.VM{Name: fmt.Sprintf("v%d.alice.usher.test", step), Short: fmt.Sprintf("v%d", step), Owner: "alice",
				Cluster: "v", LNM: name(), State: api.StateStarting, MemMB: 256 * rng.IntN(3), VCPUs: rng.IntN(2)}
			c.st.mu.Lock()
			if c.st.insertLocked(vm) {
				vms = append(vms, vm)
			}
			c.st.mu.Unlock()
		case 7: // an unmanaged VM appears or goes
			if n := name(); gens[n] != 0 {
				st := api.StateRunning
				if rng.IntN(2) == 0 {
					st = api.StateDestroyed
				}
				c.HandleReport(n, gens[n], api.Report{Changes: []api.Guest{{Name: fmt.Sprintf("guest%d", rng.IntN(4)), State: st}}})
			}
		case 6: // a VM removed
			if len(vms) > 0 {
				i := rng.IntN(len(vms))
				c.st.mu.Lock()
				c.st.removeLocked(vms[i])
				c.st.mu.Unlock()
				vms = append(vms[:i], vms[i+1:]...)
			}
		}
		if step%10 != 0 {
			continue
		}
		in := map[api.LNMState]int{}
		for _, l := range c.st.LNMs() {
			in[l.State]++
		}
		unmanaged := 0
		c.st.mu.RLock()
		for _, l := range c.st.lnms {
			unmanaged += len(l.unmanaged)
		}
		c.st.mu.RUnlock()
		if got := c.st.Counts().Unmanaged; got != unmanaged {
			t.Fatalf("step %d: Counts().Unmanaged = %d, the lists hold %d", step, got, unmanaged)
		}
		c.st.mu.RLock()
		for _, st := range []api.LNMState{api.LNMConnected, api.LNMDisconnected, api.LNMRecovering} {
			if c.st.lnmsIn[st] != in[st] {
				t.Fatalf("step %d: %d LNMs counted %s, %d are", step, c.st.lnmsIn[st], st, in[st])
			}
		}
		c.st.mu.RUnlock()
		if got := c.st.Counts().Connected; got != in[api.LNMConnected] {
			t.Fatalf("step %d: Counts().Connected = %d, want %d", step, got, in[api.LNMConnected])
		}
		for _, q := range []LNMQuery{
			{Connected: true, OrderBy: "load", Limit: 5},
			{MemMB: 1024, VCPUs: 1, OrderBy: "free_mem"},
			{Connected: true, OrderBy: "vms", Limit: 3, Names: []string{"n01", "n02", "n03", "n04"}},
			{},
		} {
			got, want := c.st.QueryLNMs(q), q.Apply(c.st.LNMs())
			if len(got) != len(want) {
				t.Fatalf("step %d, query %+v: %d LNMs, want %d", step, q, len(got), len(want))
			}
			for i := range got {
				if got[i].Info.Name != want[i].Info.Name || got[i].State != want[i].State || got[i].Status != want[i].Status {
					t.Fatalf("step %d, query %+v, position %d: %+v, want %+v", step, q, i, got[i], want[i])
				}
			}
		}
	}
}
