package nodemgr

import (
	"testing"

	"github.com/usher-vm/usher/core"
)

// TestReceiveSync: a full sync keeps exactly the objects it names, replaces
// those it sends whole and updates the state part of those it names in
// States; a state update older than the cached object is ignored.
func TestReceiveSync(t *testing.T) {
	l := &LNM{cache: map[string]*core.VM{}, reported: map[string]core.VMState{}}
	l.cache["keep"] = &core.VM{Name: "keep", State: core.StateStarting, Version: 1, Cluster: "c"}
	l.cache["stale"] = &core.VM{Name: "stale", State: core.StateRunning, Version: 4}
	l.cache["old"] = &core.VM{Name: "old", State: core.StatePaused, Version: 9}
	l.receive(core.ReceiveArgs{Sync: true,
		VMs: []*core.VM{{Name: "whole", State: core.StateRunning, Version: 3, Cluster: "w"}},
		States: []core.StateUpdate{
			{Name: "keep", State: core.StateRunning, Reason: core.ReasonStarted, Version: 2},
			{Name: "old", State: core.StateRunning, Version: 8},
		}})
	if len(l.cache) != 3 || l.cache["stale"] != nil {
		t.Fatalf("after sync the cache holds %v", l.cache)
	}
	if k := l.cache["keep"]; k.State != core.StateRunning || k.Reason != core.ReasonStarted || k.Version != 2 || k.Cluster != "c" {
		t.Fatalf("keep: %+v", k)
	}
	if w := l.cache["whole"]; w == nil || w.Cluster != "w" || w.Version != 3 {
		t.Fatalf("whole: %+v", w)
	}
	if o := l.cache["old"]; o.State != core.StatePaused || o.Version != 9 {
		t.Fatalf("an older state update overwrote a newer object: %+v", o)
	}
}
