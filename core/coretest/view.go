package coretest

import (
	"sort"
	"sync"

	"github.com/usher-vm/usher/api"
)

// View is an in-memory core.StateView: the state the Lua engine's tests,
// the policy test runner (usher_test.fixture, lua/policytool) and the
// benchmarks run policies against. It is safe for concurrent use.
type View struct {
	mu     sync.RWMutex
	domain string
	vms    map[string]*api.VM
	lnms   map[string]*api.LNM
}

// NewView returns an empty view whose VM names end in domain.
func NewView(domain string) *View {
	return &View{domain: domain, vms: map[string]*api.VM{}, lnms: map[string]*api.LNM{}}
}

// AddLNM adds or replaces a node.
func (f *View) AddLNM(n *api.LNM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lnms[n.Info.Name] = n
}

// AddVM adds or replaces a VM.
func (f *View) AddVM(v *api.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[v.Name] = v
}

func (f *View) VM(name string) (*api.VM, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.vms[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

func (f *View) sortedVMs(keep func(*api.VM) bool) []*api.VM {
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

func (f *View) VMsOf(owner, cluster string) []*api.VM {
	return f.sortedVMs(func(v *api.VM) bool { return v.Owner == owner && (cluster == "" || v.Cluster == cluster) })
}

func (f *View) VMsOn(lnm string) []*api.VM {
	return f.sortedVMs(func(v *api.VM) bool { return v.LNM == lnm })
}

func (f *View) CountOf(owner string) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := 0
	for _, v := range f.vms {
		if v.Owner == owner {
			n++
		}
	}
	return n
}

func (f *View) LNM(name string) (*api.LNM, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.lnms[name]
	if !ok {
		return nil, false
	}
	c := *n
	return &c, true
}

func (f *View) LNMs() []*api.LNM {
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

func (f *View) Clusters(owner string) []api.Cluster {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m := map[string]*api.Cluster{}
	for _, v := range f.vms {
		if owner != "" && v.Owner != owner {
			continue
		}
		k := v.Owner + "/" + v.Cluster
		c := m[k]
		if c == nil {
			c = &api.Cluster{Name: v.Cluster, Owner: v.Owner}
			m[k] = c
		}
		c.VMs = append(c.VMs, v.Name)
	}
	out := make([]api.Cluster, 0, len(m))
	for _, c := range m {
		sort.Strings(c.VMs)
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

func (f *View) Domain() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.domain
}

// Replace makes the view hold exactly these nodes and VMs, with domain.
func (f *View) Replace(domain string, lnms []*api.LNM, vms []*api.VM) {
	lm := make(map[string]*api.LNM, len(lnms))
	for _, n := range lnms {
		lm[n.Info.Name] = n
	}
	vm := make(map[string]*api.VM, len(vms))
	for _, v := range vms {
		vm[v.Name] = v
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domain, f.lnms, f.vms = domain, lm, vm
}
