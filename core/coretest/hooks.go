// Package coretest provides a Go test double of core.Hooks: fixed users,
// owner-only authorization, round-robin placement and migration to the
// first suggested node. Tests of the mechanism use it; production runs the
// Lua host.
package coretest

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/usher-vm/usher/core"
)

// Hooks is a simple, deterministic policy set for tests.
type Hooks struct {
	Users  map[string]string // user → password
	Admins map[string]bool
	View   core.StateView
	// MaxVMs trims start requests beyond this many VMs per user (0: none).
	MaxVMs int

	mu     sync.Mutex
	next   int
	notify chan core.Event
}

// New returns hooks for the given users.
func New(users map[string]string, admins ...string) *Hooks {
	h := &Hooks{Users: users, Admins: map[string]bool{}, notify: make(chan core.Event, 100000)}
	for _, a := range admins {
		h.Admins[a] = true
	}
	return h
}

// Authenticate implements core.Hooks.
func (h *Hooks) Authenticate(ctx context.Context, c core.Credentials) (core.Identity, error) {
	pw, ok := h.Users[c.User]
	if !ok || pw == "" || pw != c.Password {
		return core.Identity{}, core.ErrAuthFailed
	}
	return core.Identity{User: c.User, Admin: h.Admins[c.User]}, nil
}

// Authorize implements core.Hooks: users act only on their own VMs.
func (h *Hooks) Authorize(ctx context.Context, r *core.Request) error {
	if r.Kind == core.KindList && r.All && !r.User.Admin {
		return &core.RejectError{Event: "authorize", Handler: "coretest", Reason: "only admins list everyone's VMs"}
	}
	if r.User.Admin {
		return nil
	}
	for _, v := range append([]*core.ReqVM(nil), r.VMs...) {
		if v.Owner != r.User.User {
			r.DropVM(v.Name, "not yours", "coretest")
		}
	}
	return nil
}

// Request implements core.Hooks: quota, round-robin placement honouring
// suggestions, migration to the first suggested node.
func (h *Hooks) Request(ctx context.Context, event string, r *core.Request) error {
	r.Trace = append(r.Trace, core.TraceStep{Event: event, Handler: "coretest", Action: "approved"})
	switch event {
	case core.EvStartRequest:
		if h.MaxVMs > 0 && h.View != nil {
			have := h.View.CountOf(r.User.User)
			allowed := h.MaxVMs - have
			if allowed < 0 {
				allowed = 0
			}
			for len(r.VMs) > allowed {
				last := r.VMs[len(r.VMs)-1]
				r.DropVM(last.Name, fmt.Sprintf("quota: %d VMs per user", h.MaxVMs), "coretest")
			}
		}
		nodes := r.LNMs
		if len(nodes) == 0 && h.View != nil {
			for _, l := range h.View.LNMs() {
				if l.State == core.LNMConnected {
					nodes = append(nodes, l.Info.Name)
				}
			}
		}
		sort.Strings(nodes)
		if len(nodes) == 0 {
			return nil
		}
		h.mu.Lock()
		for _, v := range r.VMs {
			v.LNM = nodes[h.next%len(nodes)]
			h.next++
		}
		h.mu.Unlock()
	case core.EvMigrateRequest:
		for _, v := range r.VMs {
			for _, n := range r.LNMs {
				if n != v.LNM {
					v.Target = n
					break
				}
			}
		}
	}
	return nil
}

// RegisterVM implements core.Hooks: it attaches a fake address.
func (h *Hooks) RegisterVM(ctx context.Context, r *core.Request, vm *core.ReqVM) error {
	if vm.Data == nil {
		vm.Data = map[string]string{}
	}
	vm.Data["registered"] = "yes"
	return nil
}

// Notify implements core.Hooks; events are kept for assertions.
func (h *Hooks) Notify(ev core.Event) {
	select {
	case h.notify <- ev:
	default:
	}
}

// Notified returns the channel of notification events.
func (h *Hooks) Notified() <-chan core.Event { return h.notify }
