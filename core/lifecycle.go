package core

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"
)

// This file is a node's lifecycle beyond connected/disconnected: modes
// (active, isolated, draining, maintenance) set by admins and policies and
// kept across restarts (Config.SaveModes), and the fencing of a lost node
// (Config.Fence) that alone allows its VMs to be restarted elsewhere
// (Failover). Moving VMs off a draining node is policy (scripts/drain.lua);
// the mechanism only refuses to place anything new on a node that is not
// active and marks a draining node that has become empty as maintenance.

// ModeRecord is what is kept of a node's mode across controller restarts.
type ModeRecord struct {
	Mode   api.NodeMode `json:"mode"`
	Reason string       `json:"reason,omitempty"`
	By     string       `json:"by,omitempty"`
	Since  time.Time    `json:"since"`
}

// RestoreModes sets the modes kept from before a restart; nodes without a
// record yet get theirs when they first appear. Call it before LNMs attach.
func (c *Controller) RestoreModes(m map[string]ModeRecord) {
	c.st.write(func() {
		for name, r := range m {
			if api.ValidLabel(name) != nil {
				continue
			}
			if _, err := api.ParseNodeMode(string(r.Mode)); err != nil || r.Mode == api.ModeActive {
				continue
			}
			if l := c.st.lnms[name]; l != nil {
				setModeLocked(l, r)
				c.st.syncSlotLocked(l)
				continue
			}
			if c.st.savedModes == nil {
				c.st.savedModes = map[string]ModeRecord{}
			}
			c.st.savedModes[name] = r
		}
	})
}

func setModeLocked(l *lnmRec, r ModeRecord) {
	l.lnm.Mode, l.lnm.ModeReason, l.lnm.ModeBy, l.lnm.ModeSince = r.Mode, r.Reason, r.By, r.Since
}

// modesLocked is every node's mode that is not active (what SaveModes keeps).
func (s *State) modesLocked() map[string]ModeRecord {
	out := maps.Clone(s.savedModes)
	if out == nil {
		out = map[string]ModeRecord{}
	}
	for name, l := range s.lnms {
		if !l.lnm.Mode.Placeable() {
			out[name] = ModeRecord{Mode: l.lnm.Mode, Reason: l.lnm.ModeReason, By: l.lnm.ModeBy, Since: l.lnm.ModeSince}
		}
	}
	return out
}

// modeEvent is the lnm_mode event of node l's record as it is now.
func modeEvent(l *lnmRec, previous api.NodeMode, errText string) api.Event {
	d := api.StringMap{"mode": string(l.lnm.Mode), "previous": string(previous)}
	if l.lnm.ModeReason != "" {
		d["reason"] = l.lnm.ModeReason
	}
	if l.lnm.ModeBy != "" {
		d["by"] = l.lnm.ModeBy
	}
	if l.lnm.Notice != "" {
		d["notice"] = l.lnm.Notice
	}
	if l.lnm.Fenced {
		d["fenced"] = "true"
	}
	return api.Event{Type: api.EvLNMMode, LNM: l.lnm.Info.Name, Detail: d, Error: errText}
}

// drainedLocked moves a draining node whose VMs have all left (none takes
// its resources) to maintenance. Only a connected node is judged: after a
// restart its VMs are known only once it has reported them.
func (s *State) drainedLocked(l *lnmRec) {
	if l.lnm.Mode != api.ModeDraining || l.active != 0 || l.lnm.State != api.LNMConnected || l.attaching {
		return
	}
	l.lnm.Mode = api.ModeMaintenance
	l.lnm.ModeSince = now()
	l.lnm.Notice = "drained: no VM takes its resources"
	s.syncSlotLocked(l)
	s.modeEvents = append(s.modeEvents, modeEvent(l, api.ModeDraining, ""))
	s.modePending.Store(true)
}

// takeModeEventsLocked returns (and clears) the events of automatic mode
// changes. The caller holds mu.
func (s *State) takeModeEventsLocked() []api.Event {
	evs := s.modeEvents
	s.modeEvents = nil
	s.modePending.Store(false)
	return evs
}

// flushModes saves the modes and emits the events of automatic mode
// changes (a drained node entering maintenance). emit calls it when one
// is pending.
func (c *Controller) flushModes() {
	var evs []api.Event
	c.st.write(func() { evs = c.st.takeModeEventsLocked() })
	if len(evs) == 0 {
		return
	}
	c.saveModes()
	c.emit(evs...)
}

// saveModes hands every non-active mode to Config.SaveModes; the writes are
// serialised, each taking the state at its turn, so the last one wins.
func (c *Controller) saveModes() error {
	if c.cfg.SaveModes == nil {
		return nil
	}
	c.modeMu.Lock()
	defer c.modeMu.Unlock()
	var m map[string]ModeRecord
	c.st.read(func() { m = c.st.modesLocked() })
	if err := c.cfg.SaveModes(m); err != nil {
		c.log.Error("saving node modes failed", "err", err)
		return err
	}
	return nil
}

// SetLNMMode isolates, drains or restores (mode active) a node. It is
// saved before it returns; the lnm_mode event tells clients and policies.
// Restoring or isolating a draining node cancels the drain (the VMs that
// left stay where they went).
func (c *Controller) SetLNMMode(ctx context.Context, id api.Identity, a api.SetLNMModeArgs) (*api.LNM, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if !id.Admin {
		return nil, api.Errorf(api.ErrForbidden, "changing a node's mode needs an admin")
	}
	return c.setMode(a.LNM, a.Mode, a.Reason, id.User)
}

// SetLNMModeBy is SetLNMMode for a policy (by names the script).
func (c *Controller) SetLNMModeBy(name string, mode api.NodeMode, reason, by string) (*api.LNM, error) {
	a := api.SetLNMModeArgs{LNM: name, Mode: mode, Reason: reason}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return c.setMode(name, mode, reason, by)
}

func (c *Controller) setMode(name string, mode api.NodeMode, reason, by string) (*api.LNM, error) {
	var out *api.LNM
	var evs []api.Event
	c.st.write(func() {
		l := c.st.lnms[name]
		if l == nil || l.lnm.Info.Name == "" {
			return
		}
		prev := l.lnm.Mode
		l.lnm.Mode, l.lnm.ModeReason, l.lnm.ModeBy, l.lnm.ModeSince = mode, reason, by, now()
		if mode != prev {
			l.lnm.Notice = ""
		}
		c.st.syncSlotLocked(l)
		evs = append(evs, modeEvent(l, prev, ""))
		c.st.drainedLocked(l)
		evs = append(evs, c.st.takeModeEventsLocked()...)
		cp := l.lnm
		out = &cp
	})
	if out == nil {
		return nil, api.Errorf(api.ErrNotFound, "no such LNM %q", name)
	}
	if err := c.saveModes(); err != nil {
		c.emit(evs...)
		return out, api.Errorf(api.ErrInternal, "node %s is %s but the mode could not be saved (it is lost on a restart): %v", name, mode, err)
	}
	c.log.Info("node mode changed", "lnm", name, "mode", mode, "reason", reason, "by", by)
	c.emit(evs...)
	return out, nil
}

// SetLNMNotice records what a policy reports about a node (a drain's
// progress, VMs that cannot move); an lnm_mode event carries it when it
// changed.
func (c *Controller) SetLNMNotice(name, notice string) error {
	if len(notice) > api.MaxReasonLen {
		notice = strings.ToValidUTF8(notice[:api.MaxReasonLen], "") // not cut inside a character
	}
	var ev *api.Event
	found := false
	c.st.write(func() {
		l := c.st.lnms[name]
		if l == nil || l.lnm.Info.Name == "" {
			return
		}
		found = true
		if l.lnm.Notice == notice {
			return
		}
		l.lnm.Notice = notice
		e := modeEvent(l, l.lnm.Mode, "")
		ev = &e
	})
	if !found {
		return api.Errorf(api.ErrNotFound, "no such LNM %q", name)
	}
	if ev != nil {
		c.emit(*ev)
	}
	return nil
}

// placeableLocked says why nothing new may go to node name ("" if it may).
func (s *State) placeableLocked(name string) string {
	l := s.lnms[name]
	switch {
	case l == nil:
		return fmt.Sprintf("LNM %q is not connected", name)
	case l.lnm.State != api.LNMConnected:
		return fmt.Sprintf("LNM %q is not connected", name)
	case !l.lnm.Mode.Placeable():
		why := fmt.Sprintf("LNM %q is %s: nothing new is placed there", name, l.lnm.Mode)
		if l.lnm.ModeReason != "" {
			why += " (" + l.lnm.ModeReason + ")"
		}
		return why
	}
	return ""
}

// guaranteeLocked says why node name cannot take guaranteed VM vm ("" if
// it can, or vm is best-effort): its vCPUs must fit what the node can
// still guarantee and its memory what is free (memory is never
// overcommitted).
func (s *State) guaranteeLocked(name string, vm *api.VM) string {
	if !api.Guaranteed(vm.Data) {
		return ""
	}
	l := s.lnms[name]
	if l == nil {
		return fmt.Sprintf("LNM %q is not connected", name)
	}
	st := l.lnm.Status
	if st.FreeGuaranteedVCPUs < vm.VCPUs || st.FreeMemMB < vm.MemMB {
		return fmt.Sprintf("LNM %s cannot guarantee %d vCPUs and %d MiB (%d vCPUs and %d MiB left to guarantee)",
			name, vm.VCPUs, vm.MemMB, max(st.FreeGuaranteedVCPUs, 0), max(st.FreeMemMB, 0))
	}
	return ""
}

// guarantee is guaranteeLocked under the read lock.
func (s *State) guarantee(name string, vm *api.VM) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.guaranteeLocked(name, vm)
}

// modeOf is node name's mode.
func (s *State) modeOf(name string) api.NodeMode {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if l := s.lnms[name]; l != nil {
		return l.lnm.Mode
	}
	return ""
}

// placeable is placeableLocked under the read lock.
func (s *State) placeable(name string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.placeableLocked(name)
}

// ---------------------------------------------------------------------------
// Fencing and failover

// Fence runs the site's fencing command (Config.Fence) against a node that
// is disconnected, and records it fenced when the command confirms it is
// powered off. A node that reconnects meanwhile is not marked. Fencing an
// already fenced node is a no-op.
func (c *Controller) Fence(ctx context.Context, name string) error {
	if c.cfg.Fence == nil {
		return api.Errorf(api.ErrUnavailable, "no fencing command is configured (controller.fence_command)")
	}
	var info api.NodeInfo
	var gen uint64
	var why string
	c.st.read(func() {
		l := c.st.lnms[name]
		switch {
		case l == nil || l.lnm.Info.Name == "":
			why = "no such LNM"
		case l.lnm.Fenced:
			why = "fenced"
		case l.lnm.State == api.LNMConnected:
			why = "it is connected: only a lost node is fenced"
		case l.lnm.State == api.LNMRecovering:
			why = "it is within the grace period after a controller restart"
		default:
			info, gen = l.lnm.Info, l.gen
		}
	})
	switch why {
	case "":
	case "fenced":
		return nil
	case "no such LNM":
		return api.Errorf(api.ErrNotFound, "no such LNM %q", name)
	default:
		return api.Errorf(api.ErrBadRequest, "not fencing %s: %s", name, why)
	}
	fctx, cancel := context.WithTimeout(ctx, c.cfg.FenceTimeout)
	defer cancel()
	c.log.Warn("fencing a lost node", "lnm", name, "timeout", c.cfg.FenceTimeout)
	err := c.cfg.Fence(fctx, info)
	if err == nil && fctx.Err() != nil {
		err = fctx.Err()
	}
	var ev api.Event
	c.st.write(func() {
		l := c.st.lnms[name]
		if l == nil {
			return
		}
		switch {
		case err != nil:
			err = fmt.Errorf("fencing %s failed: %w", name, err)
			l.lnm.Notice = err.Error()
			ev = modeEvent(l, l.lnm.Mode, err.Error())
		case l.gen != gen || l.lnm.State == api.LNMConnected:
			err = fmt.Errorf("%s reconnected while it was being fenced: not marked fenced", name)
			ev = modeEvent(l, l.lnm.Mode, err.Error())
		default:
			l.lnm.Fenced = true
			l.lnm.Notice = "fenced at " + now().Format(time.RFC3339)
			ev = modeEvent(l, l.lnm.Mode, "")
		}
	})
	c.emit(ev)
	if err != nil {
		c.log.Error("fencing failed", "lnm", name, "err", err)
		return api.Errorf(api.ErrUnavailable, "%v", err)
	}
	c.log.Warn("node fenced: its VMs may be restarted elsewhere", "lnm", name)
	return nil
}

// Failover restarts lost VMs of fenced nodes on other nodes from their
// kept objects (name, allocation, data): the migrate_request chain (kind
// failover) chooses each one's node, and the VM starts there anew. A VM
// whose node is not fenced, or has come back, is dropped: never two copies.
// A restart that fails leaves the VM lost on its fenced node, to be tried
// again.
func (c *Controller) Failover(ctx context.Context, id api.Identity, a api.MigrateArgs) (*api.Result, error) {
	return serve(c, "failover", a, len(a.VMs), func() (*api.Result, error) {
		if !id.Admin {
			return nil, api.Errorf(api.ErrForbidden, "failover needs an admin")
		}
		return c.failover(ctx, id, a)
	})
}

func (c *Controller) failover(ctx context.Context, id api.Identity, a api.MigrateArgs) (*api.Result, error) {
	req := &Request{ID: a.ID, Kind: KindFailover, User: id, LNMs: a.LNMs, Args: a.Args}
	pre := c.resolve(id, a.VMs, req)
	// Only lost VMs of fenced, still disconnected nodes go on.
	kept := req.VMs[:0]
	c.st.read(func() {
		for _, rv := range req.VMs {
			if why := c.st.failoverBlockLocked(rv.Name); why != "" {
				pre = append(pre, api.Drop{VM: rv.Name, Reason: why, By: "controller"})
				continue
			}
			kept = append(kept, rv)
		}
	})
	req.VMs = kept
	d := NewDecision(req)
	d.Dropped = pre
	if len(req.VMs) > 0 {
		if err := c.runChain(ctx, api.EvMigrateRequest, req, d); err != nil {
			return nil, err
		}
	}
	res := newOutcome()
	groups := map[string][]*api.VM{}
	origin := map[string]string{}
	var order, names []string
	for i := range req.VMs {
		rv, vd := &req.VMs[i], &d.VMs[i]
		if vd.Dropped {
			continue
		}
		names = append(names, rv.Name)
		if vd.Target == "" {
			res.set(api.VMResult{Name: rv.Name, Error: "no node chosen by policy"})
			continue
		}
		var snap *api.VM
		var why string
		c.st.write(func() {
			if why = c.st.failoverBlockLocked(rv.Name); why != "" {
				return
			}
			if why = c.st.placeableLocked(vd.Target); why != "" {
				return
			}
			vm := c.st.vms[rv.Name]
			if why = c.st.guaranteeLocked(vd.Target, vm); why != "" {
				return
			}
			if why = c.st.reservationFitLocked(vd.Target, vm); why != "" {
				return
			}
			origin[vm.Name] = vm.LNM
			c.st.markStaleLocked(vm.LNM, vm.Name)
			reason := "restarting on " + vd.Target + ": its node " + vm.LNM + " was fenced"
			c.st.moveLocked(vm, vd.Target)
			c.st.setStateLocked(vm, api.StateStarting, reason)
			snap = vm.Snapshot()
		})
		if why != "" {
			res.set(api.VMResult{Name: rv.Name, Error: why})
			continue
		}
		if _, seen := groups[vd.Target]; !seen {
			order = append(order, vd.Target)
		}
		groups[vd.Target] = append(groups[vd.Target], snap)
	}
	if len(groups) == 0 {
		return res.result(a.ID, len(a.VMs), names, d, ""), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) { c.startBatchFrom(order[i], groups[order[i]], a.ID, res, origin) }) {
		pending = "still starting when the request's deadline passed; watch its state"
	}
	return res.result(a.ID, len(a.VMs), names, d, pending), nil
}

// markStaleLocked records that node's copy of VM name, if it has one, is
// stale.
func (s *State) markStaleLocked(node, name string) {
	l := s.lnms[node]
	if l == nil {
		return
	}
	if l.stale == nil {
		l.stale = map[string]bool{}
	}
	l.stale[name] = true
}

// failoverBlockLocked says why VM name may not be restarted elsewhere.
func (s *State) failoverBlockLocked(name string) string {
	vm := s.vms[name]
	if vm == nil {
		return "no such VM"
	}
	if vm.State != api.StateLost {
		return fmt.Sprintf("it is %s, not lost", vm.State)
	}
	l := s.lnms[vm.LNM]
	if l == nil || !l.lnm.Fenced {
		return fmt.Sprintf("its node %s is not fenced: it may still run there", vm.LNM)
	}
	if l.lnm.State == api.LNMConnected {
		return fmt.Sprintf("its node %s is connected again", vm.LNM)
	}
	return ""
}

var _ NodeActions = (*Controller)(nil)
