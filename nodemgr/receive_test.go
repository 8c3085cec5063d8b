package nodemgr

import (
	"context"
	"testing"

	"github.com/usher-vm/usher/api"
)

// TestReceiveSync: a full sync keeps exactly the objects it names, replaces
// those it sends whole and updates the state part of those it names in
// States; a state update older than the cached object is ignored.
func TestReceiveSync(t *testing.T) {
	l := &LNM{cache: map[string]*api.VM{}, reported: map[string]api.VMState{}}
	l.cache["keep"] = &api.VM{Name: "keep", State: api.StateStarting, Version: 1, Cluster: "c"}
	l.cache["stale"] = &api.VM{Name: "stale", State: api.StateRunning, Version: 4}
	l.cache["old"] = &api.VM{Name: "old", State: api.StatePaused, Version: 9}
	l.Sync(context.Background(), api.ReceiveArgs{
		VMs: []*api.VM{{Name: "whole", State: api.StateRunning, Version: 3, Cluster: "w"}},
		States: []api.StateUpdate{
			{Name: "keep", State: api.StateRunning, Reason: api.ReasonStarted, Version: 2},
			{Name: "old", State: api.StateRunning, Version: 8},
		}})
	if len(l.cache) != 3 || l.cache["stale"] != nil {
		t.Fatalf("after sync the cache holds %v", l.cache)
	}
	if k := l.cache["keep"]; k.State != api.StateRunning || k.Reason != api.ReasonStarted || k.Version != 2 || k.Cluster != "c" {
		t.Fatalf("keep: %+v", k)
	}
	if w := l.cache["whole"]; w == nil || w.Cluster != "w" || w.Version != 3 {
		t.Fatalf("whole: %+v", w)
	}
	if o := l.cache["old"]; o.State != api.StatePaused || o.Version != 9 {
		t.Fatalf("an older state update overwrote a newer object: %+v", o)
	}
}
