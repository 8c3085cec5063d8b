package core

import "github.com/usher-vm/usher/api"

// SizeHint is how big the state was: a restarted controller reserves its
// indices for it before the site registers, instead of growing maps of a
// million VMs one insertion at a time (on the 1,000,000-VM recovery the
// growth was about a twelfth of the controller's work). It is a hint, not
// state: a wrong or missing one costs speed, never correctness.
type SizeHint struct {
	VMs int `json:"vms"`
	// Owners and clusters ("owner/cluster") with at least HintMinVMs VMs:
	// smaller maps grow cheaply.
	Owners   map[string]int `json:"owners,omitempty"`
	Clusters map[string]int `json:"clusters,omitempty"`
}

const (
	// HintMinVMs is the size from which owners and clusters are hinted.
	HintMinVMs = 256
	// hintMaxVMs bounds what a hint may reserve (a site of 16M VMs): a
	// damaged hint file must not take the controller's memory.
	hintMaxVMs = 1 << 24
	// hintMaxEntries bounds the owners and clusters taken from a hint.
	hintMaxEntries = 1 << 14
)

// SizeHint returns the state's current sizes.
func (s *State) SizeHint() SizeHint {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := SizeHint{VMs: len(s.vms)}
	for o, m := range s.owners {
		if len(m) >= HintMinVMs && len(h.Owners) < hintMaxEntries {
			if h.Owners == nil {
				h.Owners = map[string]int{}
			}
			h.Owners[o] = len(m)
		}
	}
	for k, c := range s.clusters {
		if len(c.vms) >= HintMinVMs && len(h.Clusters) < hintMaxEntries {
			if h.Clusters == nil {
				h.Clusters = map[string]int{}
			}
			h.Clusters[k.owner+"/"+k.name] = len(c.vms)
		}
	}
	return h
}

// Reserve sizes the indices for h. It only acts on an empty state (a
// restart, before the first LNM registers); figures out of range are
// ignored. Owner and cluster maps are made with their size when their
// first VM arrives, so no empty owner or cluster ever shows.
func (s *State) Reserve(h SizeHint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.vms) > 0 || h.VMs <= 0 || h.VMs > hintMaxVMs {
		return
	}
	s.vms = make(map[string]*api.VM, h.VMs)
	fits := func(n int) bool { return n >= HintMinVMs && n <= h.VMs }
	s.ownerHint, s.clusterHint = map[string]int{}, map[clusterKey]int{}
	for o, n := range h.Owners {
		if fits(n) && len(s.ownerHint) < hintMaxEntries && api.ValidLabel(o) == nil {
			s.ownerHint[o] = n
		}
	}
	for k, n := range h.Clusters {
		o, c, ok := clusterOwner(k)
		if fits(n) && ok && len(s.clusterHint) < hintMaxEntries && api.ValidLabel(o) == nil && api.ValidLabel(c) == nil {
			s.clusterHint[clusterKey{o, c}] = n
		}
	}
}

// ownerMapLocked makes an owner's VM map, sized by the hint if any.
func (s *State) ownerMapLocked(owner string) map[string]*api.VM {
	n := s.ownerHint[owner]
	delete(s.ownerHint, owner)
	return make(map[string]*api.VM, n)
}

// clusterMapLocked makes a cluster's VM map, sized by the hint if any.
func (s *State) clusterMapLocked(k clusterKey) map[string]*api.VM {
	n := s.clusterHint[k]
	delete(s.clusterHint, k)
	return make(map[string]*api.VM, n)
}

// dropHints forgets what was not used (the site is whole).
func (s *State) dropHints() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ownerHint, s.clusterHint = nil, nil
}
