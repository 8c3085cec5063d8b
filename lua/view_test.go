package lua

import (
	"context"
	"io"
	"sort"
	"sync"

	"github.com/usher-vm/usher/api"
)

// memView is the engine tests' in-memory core.StateView (policy tooling
// has its own, lua/policytool.FixtureView, which imports this package).
type memView struct {
	mu   sync.RWMutex
	vms  map[string]*api.VM
	lnms map[string]*api.LNM
}

func newMemView() *memView { return &memView{vms: map[string]*api.VM{}, lnms: map[string]*api.LNM{}} }

func (f *memView) AddLNM(n *api.LNM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lnms[n.Info.Name] = n
}

func (f *memView) AddVM(v *api.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[v.Name] = v
}

func (f *memView) VM(name string) (*api.VM, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.vms[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

func (f *memView) sortedVMs(keep func(*api.VM) bool) []*api.VM {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*api.VM
	for _, v := range f.vms {
		if keep(v) {
			out = append(out, v.Clone())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (f *memView) VMsOf(owner, cluster string) []*api.VM {
	return f.sortedVMs(func(v *api.VM) bool { return v.Owner == owner && (cluster == "" || v.Cluster == cluster) })
}

func (f *memView) VMsOn(lnm string) []*api.VM {
	return f.sortedVMs(func(v *api.VM) bool { return v.LNM == lnm })
}

func (f *memView) CountOf(owner string) int {
	return len(f.sortedVMs(func(v *api.VM) bool { return v.Owner == owner }))
}

func (f *memView) LNM(name string) (*api.LNM, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.lnms[name]
	if !ok {
		return nil, false
	}
	c := *n
	return &c, true
}

func (f *memView) LNMs() []*api.LNM {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*api.LNM, 0, len(f.lnms))
	for _, n := range f.lnms {
		c := *n
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Name < out[j].Info.Name })
	return out
}

func (f *memView) Clusters(owner string) []api.Cluster {
	m := map[string]*api.Cluster{}
	for _, v := range f.sortedVMs(func(v *api.VM) bool { return owner == "" || v.Owner == owner }) {
		k := v.Owner + "/" + v.Cluster
		if m[k] == nil {
			m[k] = &api.Cluster{Name: v.Cluster, Owner: v.Owner}
		}
		m[k].VMs = append(m[k].VMs, v.Name)
	}
	out := make([]api.Cluster, 0, len(m))
	for _, c := range m {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Owner != out[j].Owner {
			return out[i].Owner < out[j].Owner
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func (f *memView) Domain() string { return "usher.test" }

// recorder is the engine tests' core.Actions: it records what timers ask for.
type recorder struct {
	mu  sync.Mutex
	log []map[string]any
}

func (r *recorder) OpOn(_ context.Context, _ api.Identity, a api.OpArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "op", "op": string(a.Op), "vms": a.VMs})
	return &api.Result{Requested: len(a.VMs)}, nil
}

func (r *recorder) Migrate(_ context.Context, _ api.Identity, a api.MigrateArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "migrate", "vms": a.VMs, "lnms": a.LNMs})
	return &api.Result{Requested: len(a.VMs)}, nil
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
