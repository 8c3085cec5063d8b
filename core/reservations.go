package core

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/usher-vm/usher/api"
)

// This file is reservations: resources held on nodes for one user between
// a start and an end (api.Reservation). While one is active, what its VMs
// do not use of it is subtracted from its nodes' free capacity (lnmRec.held*)
// so that placement offers it to no one else, and the mechanism refuses a
// start of someone else's VM that would eat into it. A VM started under a
// reservation (data reservation=ID, set by scripts/reservations.lua) must
// fit what is left of it on its node. A clock goroutine starts and ends
// reservations on time; what happens to their VMs at the end is policy.

// resRec is a reservation and what its VMs take.
type resRec struct {
	r      api.Reservation
	active bool
	used   map[string]*api.ReservationUse // node → what its consuming VMs take there
	vms    map[string]*api.VM             // every VM with its id in data reservation
}

func newResRec(r api.Reservation) *resRec {
	return &resRec{r: r, used: map[string]*api.ReservationUse{}, vms: map[string]*api.VM{}}
}

// purgeAfter is how long an ended reservation with no VM left is listed.
const purgeAfter = time.Hour

// reservationOf returns the reservation a VM was started under, if it
// is known.
func (s *State) reservationOf(vm *api.VM) *resRec {
	if id := vm.Data[api.DataReservation]; id != "" && s.reservations != nil {
		return s.reservations[id]
	}
	return nil
}

// holdLocked recomputes what node l holds for its active reservations:
// what their VMs do not take of each.
func (s *State) holdLocked(l *lnmRec) {
	l.heldMem, l.heldCPUs = 0, 0
	for _, rr := range l.res {
		if !rr.active {
			continue
		}
		u := rr.used[l.lnm.Info.Name]
		mem, cpus := rr.r.MemMB, rr.r.VCPUs
		if u != nil {
			mem, cpus = mem-u.MemMB, cpus-u.VCPUs
		}
		l.heldMem += max(mem, 0)
		l.heldCPUs += max(cpus, 0)
	}
}

// chargeReservationLocked follows what vm takes of its reservation on l.
func (s *State) chargeReservationLocked(l *lnmRec, vm *api.VM, sign int) {
	rr := s.reservationOf(vm)
	if rr == nil {
		return
	}
	name := l.lnm.Info.Name
	u := rr.used[name]
	if u == nil {
		u = &api.ReservationUse{}
		rr.used[name] = u
	}
	u.MemMB += sign * vm.MemMB
	u.VCPUs += sign * vm.VCPUs
	if u.MemMB == 0 && u.VCPUs == 0 {
		delete(rr.used, name)
	}
	s.holdLocked(l)
}

// setHoldsLocked re-attaches rr to its nodes (or detaches it, gone) and
// recomputes their holds and slots.
func (s *State) setHoldsLocked(rr *resRec, gone bool) {
	for _, n := range rr.r.LNMs {
		l := s.lnmLocked(n)
		l.res = slices.DeleteFunc(l.res, func(x *resRec) bool { return x == rr })
		if !gone {
			l.res = append(l.res, rr)
		}
		s.holdLocked(l)
		s.syncSlotLocked(l)
	}
}

// reservationFitLocked says why vm may not take its place on node: a VM
// under a reservation must be its owner's (and cluster's), on one of its
// nodes, within what is left of it there while it is active; any other
// VM must not eat into what a node holds for reservations.
func (s *State) reservationFitLocked(node string, vm *api.VM) string {
	l := s.lnms[node]
	if l == nil {
		return fmt.Sprintf("LNM %q is not connected", node)
	}
	id := vm.Data[api.DataReservation]
	if id == "" {
		if l.heldMem == 0 && l.heldCPUs == 0 {
			return ""
		}
		st := l.lnm.Status
		if st.FreeMemMB < vm.MemMB || st.FreeVCPUs < vm.VCPUs {
			return fmt.Sprintf("LNM %s: %d MiB and %d vCPUs of it are reserved; %d MiB and %d vCPUs are free to others",
				node, l.heldMem, l.heldCPUs, max(st.FreeMemMB, 0), max(st.FreeVCPUs, 0))
		}
		return ""
	}
	rr := s.reservations[id]
	switch {
	case rr == nil:
		return fmt.Sprintf("no reservation %s", id)
	case rr.r.Owner != vm.Owner || (rr.r.Cluster != "" && rr.r.Cluster != vm.Cluster):
		return fmt.Sprintf("reservation %s is not held for %s", id, vm.Name)
	case !rr.active:
		return fmt.Sprintf("reservation %s is %s", id, rr.state())
	case !slices.Contains(rr.r.LNMs, node):
		return fmt.Sprintf("reservation %s holds nothing on %s (its nodes: %v)", id, node, rr.r.LNMs)
	}
	mem, cpus := rr.r.MemMB, rr.r.VCPUs
	if u := rr.used[node]; u != nil {
		mem, cpus = mem-u.MemMB, cpus-u.VCPUs
	}
	if vm.MemMB > mem || vm.VCPUs > cpus {
		return fmt.Sprintf("reservation %s has %d MiB and %d vCPUs left on %s; %s needs %d MiB and %d vCPUs",
			id, max(mem, 0), max(cpus, 0), node, vm.Name, vm.MemMB, vm.VCPUs)
	}
	return ""
}

// reservationFit is reservationFitLocked under the read lock.
func (s *State) reservationFit(node string, vm *api.VM) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.reservationFitLocked(node, vm)
}

func (rr *resRec) state() string {
	switch {
	case rr.active:
		return api.ResActive
	case time.Now().Before(rr.r.Start):
		return api.ResPending
	}
	return api.ResEnded
}

// view is a copy of the reservation with its use and VMs.
func (rr *resRec) view() api.Reservation {
	r := rr.r
	r.LNMs = slices.Clone(r.LNMs)
	r.State = rr.state()
	if len(rr.used) > 0 {
		r.Used = make(map[string]api.ReservationUse, len(rr.used))
		for n, u := range rr.used {
			r.Used[n] = *u
		}
	}
	for n := range rr.vms {
		r.VMs = append(r.VMs, n)
	}
	sort.Strings(r.VMs)
	return r
}

// Reservation returns a copy of reservation id.
func (s *State) Reservation(id string) (*api.Reservation, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	rr := s.reservations[id]
	if rr == nil {
		return nil, false
	}
	r := rr.view()
	return &r, true
}

// Reservations returns copies of every reservation (of owner, unless "").
func (s *State) Reservations(owner string) []api.Reservation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []api.Reservation{}
	for _, rr := range s.reservations {
		if owner == "" || rr.r.Owner == owner {
			out = append(out, rr.view())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func (s *State) saveListLocked() []api.Reservation {
	out := make([]api.Reservation, 0, len(s.reservations))
	for _, rr := range s.reservations {
		r := rr.r
		r.State = rr.state()
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// RestoreReservations brings back the reservations kept from before a
// restart. Call it before LNMs attach (their VMs' data names them).
func (c *Controller) RestoreReservations(list []api.Reservation) {
	now := time.Now()
	c.st.write(func() {
		if c.st.reservations == nil {
			c.st.reservations = map[string]*resRec{}
		}
		for _, r := range list {
			if api.ValidReservationID(r.ID) != nil || api.ValidLabel(r.Owner) != nil || len(r.LNMs) == 0 {
				continue
			}
			rr := newResRec(r)
			rr.active = !now.Before(r.Start) && now.Before(r.End)
			c.st.reservations[r.ID] = rr
			c.st.setHoldsLocked(rr, false)
		}
	})
	if len(list) > 0 {
		c.wakeClock()
	}
}

// saveReservations hands every reservation to Config.SaveReservations,
// serialised like the modes.
func (c *Controller) saveReservations() error {
	if c.cfg.SaveReservations == nil {
		return nil
	}
	c.resMu.Lock()
	defer c.resMu.Unlock()
	var list []api.Reservation
	c.st.read(func() { list = c.st.saveListLocked() })
	if err := c.cfg.SaveReservations(list); err != nil {
		c.log.Error("saving reservations failed", "err", err)
		return err
	}
	return nil
}

func resEvent(rr *resRec, state string) api.Event {
	return api.Event{Type: api.EvReservation, User: rr.r.Owner, Detail: api.StringMap{
		"id": rr.r.ID, "state": state, "owner": rr.r.Owner, "end": rr.r.End.UTC().Format(time.RFC3339), "on_end": rr.r.OnEnd}}
}

// Reservations serves the reservations method.
func (c *Controller) Reservations(ctx context.Context, id api.Identity, a api.ReservationsArgs) (api.ReservationsReply, error) {
	if err := a.Validate(); err != nil {
		return api.ReservationsReply{}, err
	}
	switch a.Action {
	case api.ResList:
		owner := id.User
		if a.All {
			if !id.Admin {
				return api.ReservationsReply{}, api.Errorf(api.ErrForbidden, "everyone's reservations: admins only")
			}
			owner = ""
		}
		return api.ReservationsReply{Reservations: c.st.Reservations(owner)}, nil
	case api.ResCreate:
		return c.createReservation(id, a)
	case api.ResExtend:
		return c.extendReservation(ctx, id, a)
	}
	return c.cancelReservation(id, a)
}

func newReservationID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "r-" + hex.EncodeToString(b)
}

// overlapLocked is what the other reservations on node hold at some
// moment of [start, end): a bound (the sum of all overlapping).
func (s *State) overlapLocked(node string, start, end time.Time, except *resRec) (mem, cpus int) {
	l := s.lnms[node]
	if l == nil {
		return 0, 0
	}
	for _, rr := range l.res {
		if rr == except || !rr.r.Start.Before(end) || !start.Before(rr.r.End) || (!rr.active && !time.Now().Before(rr.r.End)) {
			continue
		}
		mem += rr.r.MemMB
		cpus += rr.r.VCPUs
	}
	return mem, cpus
}

// roomLocked says why node cannot hold mem and cpus over [start, end)
// besides its other reservations ("" if it can): the sum of what
// overlapping reservations hold must fit the node, and, from now, what
// is free of it.
func (s *State) roomLocked(node string, mem, cpus int, start, end time.Time, except *resRec) string {
	l := s.lnms[node]
	if l == nil || l.lnm.Info.CPUs == 0 {
		return fmt.Sprintf("LNM %q is unknown", node)
	}
	om, oc := s.overlapLocked(node, start, end, except)
	if om+mem > l.lnm.Info.MemMB || oc+cpus > l.lnm.Info.CPUs {
		return fmt.Sprintf("LNM %s (%d MiB, %d vCPUs) already holds %d MiB and %d vCPUs for other reservations then",
			node, l.lnm.Info.MemMB, l.lnm.Info.CPUs, om, oc)
	}
	if !time.Now().Before(start) {
		st := l.lnm.Status
		if except != nil && except.active {
			return "" // already held
		}
		if st.FreeMemMB < mem || st.FreeVCPUs < cpus {
			return fmt.Sprintf("LNM %s has %d MiB and %d vCPUs free now", node, max(st.FreeMemMB, 0), max(st.FreeVCPUs, 0))
		}
	}
	return ""
}

func (c *Controller) createReservation(id api.Identity, a api.ReservationsArgs) (api.ReservationsReply, error) {
	if !id.Admin {
		return api.ReservationsReply{}, api.Errorf(api.ErrForbidden, "creating reservations: admins only")
	}
	now := time.Now().UTC()
	start, end, err := a.Times(now)
	if err != nil {
		return api.ReservationsReply{}, err
	}
	if !end.After(now) {
		return api.ReservationsReply{}, api.Errorf(api.ErrBadRequest, "the reservation would end before it is made")
	}
	nodes := slices.Clone(a.LNMs)
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	if len(nodes) == 0 {
		// One node: the least loaded active one with room for it now.
		got := c.st.QueryLNMs(LNMQuery{Connected: true, MemMB: a.MemMB, VCPUs: a.VCPUs, OrderBy: "load", Limit: 1})
		if len(got) == 0 {
			return api.ReservationsReply{}, api.Errorf(api.ErrUnavailable, "no active node has %d MiB and %d vCPUs free to reserve", a.MemMB, a.VCPUs)
		}
		nodes = []string{got[0].Info.Name}
	}
	onEnd := a.OnEnd
	if onEnd == "" {
		onEnd = api.OnEndShutdown
	}
	r := api.Reservation{ID: newReservationID(), Owner: a.User, Cluster: a.Cluster, MemMB: a.MemMB, VCPUs: a.VCPUs, LNMs: nodes,
		Start: start.UTC(), End: end.UTC(), OnEnd: onEnd, By: id.User, Created: now}
	var why string
	var rr *resRec
	c.st.write(func() {
		for _, n := range nodes {
			if why = c.st.roomLocked(n, a.MemMB, a.VCPUs, start, end, nil); why != "" {
				return
			}
		}
		if c.st.reservations == nil {
			c.st.reservations = map[string]*resRec{}
		}
		rr = newResRec(r)
		rr.active = !now.Before(start)
		c.st.reservations[r.ID] = rr
		c.st.setHoldsLocked(rr, false)
	})
	if why != "" {
		return api.ReservationsReply{}, api.Errorf(api.ErrUnavailable, "cannot reserve %d MiB and %d vCPUs on %v: %s", a.MemMB, a.VCPUs, nodes, why)
	}
	err = c.saveReservations()
	evs := []api.Event{resEvent(rr, "created")}
	if rr.active {
		evs = append(evs, resEvent(rr, api.ResActive))
	}
	c.emit(evs...)
	c.wakeClock()
	c.log.Info("reservation created", "id", r.ID, "owner", r.Owner, "lnms", nodes, "mem_mb", r.MemMB, "vcpus", r.VCPUs, "start", r.Start, "end", r.End, "by", id.User)
	got, _ := c.st.Reservation(r.ID)
	if err != nil {
		return api.ReservationsReply{Reservations: []api.Reservation{*got}}, api.Errorf(api.ErrInternal, "reservation %s made but not saved (lost on a restart): %v", r.ID, err)
	}
	return api.ReservationsReply{Reservations: []api.Reservation{*got}}, nil
}

// extendReservation moves a reservation's end later: its owner (as the
// authorize chain allows, kind "reservation") or an admin.
func (c *Controller) extendReservation(ctx context.Context, id api.Identity, a api.ReservationsArgs) (api.ReservationsReply, error) {
	r, ok := c.st.Reservation(a.ID)
	if !ok || (r.Owner != id.User && !id.Admin) {
		return api.ReservationsReply{}, api.Errorf(api.ErrNotFound, "no reservation %s", a.ID)
	}
	if r.State == api.ResEnded {
		return api.ReservationsReply{}, api.Errorf(api.ErrBadRequest, "reservation %s has ended", a.ID)
	}
	_, end, err := a.Times(time.Now())
	if err != nil {
		return api.ReservationsReply{}, err
	}
	if a.For != "" {
		d, _ := time.ParseDuration(a.For)
		end = r.End.Add(d)
	}
	end = end.UTC()
	if !end.After(r.End) {
		return api.ReservationsReply{}, api.Errorf(api.ErrBadRequest, "reservation %s ends at %s: an extension ends later", a.ID, r.End.Format(time.RFC3339))
	}
	if end.Sub(r.Start) > api.MaxReservationLength {
		return api.ReservationsReply{}, api.Errorf(api.ErrBadRequest, "a reservation lasts at most a year")
	}
	req := &Request{Kind: KindReservation, User: id, Args: api.StringMap{"action": api.ResExtend, "id": r.ID, "owner": r.Owner,
		"start": strconv.FormatInt(r.Start.Unix(), 10), "end": strconv.FormatInt(r.End.Unix(), 10), "new_end": strconv.FormatInt(end.Unix(), 10)}}
	if err := c.hooks.Authorize(ctx, req, NewDecision(req)); err != nil {
		return api.ReservationsReply{}, err
	}
	var why string
	var rr *resRec
	c.st.write(func() {
		rr = c.st.reservations[a.ID]
		if rr == nil || rr.state() == api.ResEnded {
			why = "it ended meanwhile"
			return
		}
		for _, n := range rr.r.LNMs {
			if why = c.st.roomLocked(n, rr.r.MemMB, rr.r.VCPUs, rr.r.End, end, rr); why != "" {
				return
			}
		}
		rr.r.End = end
	})
	if why != "" {
		return api.ReservationsReply{}, api.Errorf(api.ErrUnavailable, "cannot extend reservation %s: %s", a.ID, why)
	}
	err = c.saveReservations()
	c.emit(resEvent(rr, "extended"))
	c.wakeClock()
	c.log.Info("reservation extended", "id", a.ID, "end", end, "by", id.User)
	got, _ := c.st.Reservation(a.ID)
	if err != nil {
		return api.ReservationsReply{Reservations: []api.Reservation{*got}}, api.Errorf(api.ErrInternal, "extended but not saved: %v", err)
	}
	return api.ReservationsReply{Reservations: []api.Reservation{*got}}, nil
}

// cancelReservation ends a reservation now: its owner or an admin.
func (c *Controller) cancelReservation(id api.Identity, a api.ReservationsArgs) (api.ReservationsReply, error) {
	var rr *resRec
	var found bool
	c.st.write(func() {
		rr = c.st.reservations[a.ID]
		if rr == nil || (rr.r.Owner != id.User && !id.Admin) {
			return
		}
		found = true
		if rr.state() == api.ResEnded {
			return
		}
		now := time.Now().UTC()
		rr.r.End = now
		if rr.r.Start.After(now) {
			rr.r.Start = now
		}
		rr.active = false
		c.st.setHoldsLocked(rr, false)
	})
	if !found {
		return api.ReservationsReply{}, api.Errorf(api.ErrNotFound, "no reservation %s", a.ID)
	}
	err := c.saveReservations()
	c.emit(resEvent(rr, api.ResEnded))
	c.wakeClock()
	c.log.Info("reservation cancelled", "id", a.ID, "by", id.User)
	got, _ := c.st.Reservation(a.ID)
	if err != nil {
		return api.ReservationsReply{Reservations: []api.Reservation{*got}}, api.Errorf(api.ErrInternal, "cancelled but not saved: %v", err)
	}
	return api.ReservationsReply{Reservations: []api.Reservation{*got}}, nil
}

// wakeClock starts the reservation clock, or makes it look again.
func (c *Controller) wakeClock() {
	c.clockOnce.Do(func() {
		c.clockWake = make(chan struct{}, 1)
		c.goTracked("reservation clock", c.runClock)
	})
	select {
	case c.clockWake <- struct{}{}:
	default:
	}
}

// runClock starts and ends reservations on time and forgets ended ones
// with no VM left after purgeAfter.
func (c *Controller) runClock() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var evs []api.Event
		changed := false
		next := now.Add(time.Hour)
		c.st.write(func() {
			for id, rr := range c.st.reservations {
				switch {
				case !rr.active && !now.Before(rr.r.Start) && now.Before(rr.r.End):
					rr.active = true
					c.st.setHoldsLocked(rr, false)
					evs = append(evs, resEvent(rr, api.ResActive))
					changed = true
				case rr.active && !now.Before(rr.r.End):
					rr.active = false
					c.st.setHoldsLocked(rr, false)
					evs = append(evs, resEvent(rr, api.ResEnded))
					changed = true
				case !rr.active && !now.Before(rr.r.End.Add(purgeAfter)) && len(rr.vms) == 0:
					c.st.setHoldsLocked(rr, true)
					delete(c.st.reservations, id)
					changed = true
					continue
				}
				for _, at := range []time.Time{rr.r.Start, rr.r.End, rr.r.End.Add(purgeAfter)} {
					if at.After(now) && at.Before(next) {
						next = at
					}
				}
			}
		})
		if changed {
			c.saveReservations()
		}
		c.emit(evs...)
		t.Reset(time.Until(next))
		select {
		case <-c.stop:
			return
		case <-c.clockWake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-t.C:
		}
	}
}
