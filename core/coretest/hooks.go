package coretest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/usher-vm/usher/api"

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
	notify chan api.Event
}

// New returns hooks for the given users.
func New(users map[string]string, admins ...string) *Hooks {
	h := &Hooks{Users: users, Admins: map[string]bool{}, notify: make(chan api.Event, 100000)}
	for _, a := range admins {
		h.Admins[a] = true
	}
	return h
}

// Authenticate implements core.Hooks.
func (h *Hooks) Authenticate(ctx context.Context, c core.Credentials) (api.Identity, error) {
	pw, ok := h.Users[c.User]
	if !ok || pw == "" || pw != c.Password {
		return api.Identity{}, api.ErrUnauthorized
	}
	return api.Identity{User: c.User, Admin: h.Admins[c.User]}, nil
}

// Authorize implements core.Hooks: users act only on their own VMs.
func (h *Hooks) Authorize(ctx context.Context, r *core.Request, d *core.Decision) error {
	if r.Kind == core.KindList && r.All && !r.User.Admin {
		return &core.RejectError{Event: "authorize", Handler: "coretest", Reason: "only admins list everyone's VMs"}
	}
	if r.User.Admin {
		return nil
	}
	for i := range r.VMs {
		if r.VMs[i].Owner != r.User.User {
			d.Drop(r, i, "not yours", "coretest")
		}
	}
	return nil
}

// Request implements core.Hooks: quota, round-robin placement honouring
// suggestions, migration to the first suggested node.
func (h *Hooks) Request(ctx context.Context, event string, r *core.Request, d *core.Decision) error {
	d.Trace = append(d.Trace, api.TraceStep{Event: event, Handler: "coretest", Action: "approved"})
	switch event {
	case api.EvStartRequest:
		if h.MaxVMs > 0 && h.View != nil {
			allowed := max(h.MaxVMs-h.View.CountOf(r.User.User), 0)
			for i := range r.VMs {
				if d.VMs[i].Dropped {
					continue
				}
				if allowed > 0 {
					allowed--
					continue
				}
				d.Drop(r, i, fmt.Sprintf("quota: %d VMs per user", h.MaxVMs), "coretest")
			}
		}
		nodes := d.LNMs
		if len(nodes) == 0 && h.View != nil {
			for _, l := range h.View.LNMs() {
				if l.State == api.LNMConnected {
					nodes = append(nodes, l.Info.Name)
				}
			}
		}
		nodes = slices.Sorted(slices.Values(nodes))
		if len(nodes) == 0 {
			return nil
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for i := range d.VMs {
			d.VMs[i].LNM = nodes[h.next%len(nodes)]
			h.next++
		}
	case api.EvMigrateRequest:
		for i := range d.VMs {
			for _, n := range d.LNMs {
				if n != d.VMs[i].LNM {
					d.VMs[i].Target = n
					break
				}
			}
		}
	}
	return nil
}

// RegisterVM implements core.Hooks: it attaches a fake address.
func (h *Hooks) RegisterVM(ctx context.Context, r *core.Request, d *core.Decision, i int) error {
	data := maps.Clone(d.VMs[i].Data)
	if data == nil {
		data = api.StringMap{}
	}
	data["registered"] = "yes"
	d.VMs[i].Data = data
	return nil
}

// Notify implements core.Hooks; events are kept for assertions.
func (h *Hooks) Notify(ev api.Event) {
	select {
	case h.notify <- ev:
	default:
	}
}

// Notified returns the channel of notification events.
func (h *Hooks) Notified() <-chan api.Event { return h.notify }
