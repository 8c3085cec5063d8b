package nodemgr

import (
	"context"
	"sync"
	"testing"

	"github.com/usher-vm/usher/api"
)

// countingDriver lists its domains and counts usage samples.
type countingDriver struct {
	Driver
	mu    sync.Mutex
	doms  []GuestInfo
	stats int
}

func (d *countingDriver) Kind() string { return "counting" }

func (d *countingDriver) List(context.Context) ([]GuestInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]GuestInfo(nil), d.doms...), nil
}

func (d *countingDriver) Stats(context.Context) (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats++
	s := Stats{Node: Sample{CPU: float64(d.stats)}, Guests: map[string]Sample{}}
	for _, dom := range d.doms {
		s.Guests[dom.Name] = Sample{}
	}
	return s, nil
}

// TestHelloStatus: a node's first registration samples its usage; a
// reconnecting node (a whole site does at once after a controller
// restart) sends the averages it has and takes no new sample, with its
// capacity from the domains it runs now.
func TestHelloStatus(t *testing.T) {
	d := &countingDriver{doms: []GuestInfo{{Name: "a", State: api.StateRunning, MemMB: 1024, VCPUs: 2}}}
	l, err := New(Options{Name: "n1", Driver: d})
	if err != nil {
		t.Fatal(err)
	}
	l.info = api.NodeInfo{Name: "n1", CPUs: 8, MemMB: 8192}
	st, err := l.helloStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.stats != 1 || st.VMs != 1 || st.FreeMemMB != 7168 || st.FreeVCPUs != 6 {
		t.Fatalf("first registration: %d samples, status %+v", d.stats, st)
	}
	d.mu.Lock()
	d.doms = append(d.doms, GuestInfo{Name: "b", State: api.StatePaused, MemMB: 2048, VCPUs: 1},
		GuestInfo{Name: "c", State: api.StateShutoff, MemMB: 4096, VCPUs: 4})
	d.mu.Unlock()
	st, err = l.helloStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.stats != 1 || st.VMs != 2 || st.FreeMemMB != 5120 || st.FreeVCPUs != 5 || st.ReportedAt == 0 {
		t.Fatalf("reconnecting: %d samples (want still 1), status %+v", d.stats, st)
	}
}
