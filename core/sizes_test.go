package core

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
)

// attachSite registers lnms LNMs of perLNM VMs each: owner u<i%4>, one
// cluster per LNM (c<lnm>), as a restarted site would.
func attachSite(tb testing.TB, c *Controller, lnms, perLNM int) {
	tb.Helper()
	for l := 0; l < lnms; l++ {
		node := fmt.Sprintf("n%d", l)
		doms := make([]api.Guest, perLNM)
		for i := range doms {
			short := fmt.Sprintf("c%dx%d", l, i+1)
			owner := fmt.Sprintf("u%d", l%4)
			name := api.FullName(short, owner, "usher.test")
			doms[i] = api.Guest{Name: name, State: api.StateRunning,
				Cached: &api.VM{Name: name, Short: short, Owner: owner, Cluster: fmt.Sprintf("c%d", l), LNM: node, State: api.StateRunning, Version: 1}}
		}
		c.ExpectLNMs([]api.NodeInfo{{Name: node}})
		if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: node}}, apitest.NewNode(node), doms); err != nil {
			tb.Fatal(err)
		}
	}
}

// TestSizeHintRoundTrip: the hint names the VM count and the owners and
// clusters of at least HintMinVMs VMs; a restarted state reserved from it
// rebuilds the same state, shows no owner or cluster the LNMs did not
// bring back, and ignores figures out of range or bad names.
func TestSizeHintRoundTrip(t *testing.T) {
	c := New(Config{Domain: "usher.test"}, noHooks{})
	attachSite(t, c, 6, 300) // 1,800 VMs; owners u0,u1 600 each, u2,u3 300; clusters 300
	h := c.State().SizeHint()
	if h.VMs != 1800 || len(h.Owners) != 4 || h.Owners["u0"] != 600 || h.Owners["u3"] != 300 || len(h.Clusters) != 6 || h.Clusters["u1/c5"] != 300 {
		t.Fatalf("hint %+v", h)
	}
	small := New(Config{Domain: "usher.test"}, noHooks{})
	attachSite(t, small, 2, 10)
	if h := small.State().SizeHint(); h.VMs != 20 || len(h.Owners) != 0 || len(h.Clusters) != 0 {
		t.Fatalf("a small site's hint %+v: owners and clusters under %d VMs are not hinted", h, HintMinVMs)
	}

	r := New(Config{Domain: "usher.test"}, noHooks{})
	h.Owners["ghost"] = 500     // an owner no LNM brings back
	h.Clusters["u0/gone"] = 400 // nor this cluster
	h.Clusters["u0/../x"] = 400 // a bad name
	h.Owners["u1"] = 1 << 30    // more than the VMs hinted
	r.State().Reserve(h)
	attachSite(t, r, 6, 300)
	got := r.State().Counts()
	if got.VMs != 1800 || got.Clusters != 6 {
		t.Fatalf("after a reserved restart: %+v, want 1,800 VMs in 6 clusters", got)
	}
	if n := r.State().CountOf("ghost"); n != 0 {
		t.Fatalf("an owner only the hint named has %d VMs", n)
	}
	if h2 := r.State().SizeHint(); h2.VMs != 1800 || len(h2.Owners) != 4 || len(h2.Clusters) != 6 {
		t.Fatalf("hint after the restart %+v", h2)
	}

	// A hint only acts on an empty state.
	before := c.State().SizeHint()
	c.State().Reserve(SizeHint{VMs: 10})
	if after := c.State().SizeHint(); after.VMs != before.VMs || len(after.Clusters) != len(before.Clusters) {
		t.Fatalf("reserving on a populated state changed it: %+v", after)
	}
}

// BenchmarkRestartAttach measures a restarted controller rebuilding 100,000
// VMs from 1,000 LNMs with and without the size hint of the state before.
func BenchmarkRestartAttach(b *testing.B) {
	prev := New(Config{Domain: "usher.test"}, noHooks{})
	attachSite(b, prev, 1000, 100)
	hint := prev.State().SizeHint()
	for _, tc := range []struct {
		name string
		hint SizeHint
	}{{"no-hint", SizeHint{}}, {"hint", hint}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c := New(Config{Domain: "usher.test"}, noHooks{})
				c.State().Reserve(tc.hint)
				attachSite(b, c, 1000, 100)
			}
		})
	}
}

// FuzzSizeHint: any hint file, however damaged, decodes to a hint that
// Reserve takes without panicking or reserving past its bounds, and the
// state then holds exactly what LNMs bring back.
func FuzzSizeHint(f *testing.F) {
	f.Add([]byte(`{"vms":1000,"owners":{"u0":600},"clusters":{"u0/c0":300}}`))
	f.Add([]byte(`{"vms":16777217,"owners":{"x":-5,"../y":1000},"clusters":{"a/b/c":9,"nocluster":7}}`))
	f.Add([]byte(`{"vms":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var h SizeHint
		if json.Unmarshal(data, &h) != nil || h.VMs > 1<<20 && h.VMs <= hintMaxVMs {
			return // a big hint in range is honoured: too slow to fuzz
		}
		c := New(Config{Domain: "usher.test"}, noHooks{})
		c.State().Reserve(h)
		s := c.State()
		s.mu.RLock()
		hinted := len(s.ownerHint) + len(s.clusterHint)
		s.mu.RUnlock()
		if hinted > 2*hintMaxEntries {
			t.Fatalf("%d owner and cluster hints kept", hinted)
		}
		attachSite(t, c, 2, 3)
		if n := c.State().Counts(); n.VMs != 6 || n.Clusters != 2 {
			t.Fatalf("after a reserved restart: %+v, want 6 VMs in 2 clusters", n)
		}
	})
}
