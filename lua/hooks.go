package lua

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

var _ core.Hooks = (*Host)(nil)

// Authenticate runs the authenticate chain: each handler in order until one
// accepts. A handler error counts as a refusal by that handler (fail
// closed) and the chain continues.
func (h *Host) Authenticate(ctx context.Context, c core.Credentials) (core.Identity, error) {
	chain := h.snap.Load().chains[core.EvAuthenticate]
	for _, hd := range chain {
		if ctx.Err() != nil {
			return core.Identity{}, ctx.Err()
		}
		var id core.Identity
		accepted := false
		_, err := h.invoke(ctx, hd, kindRequest, func(ls *lstate) []glua.LValue {
			t := ls.L.CreateTable(0, 3)
			t.RawSetString("user", glua.LString(c.User))
			t.RawSetString("password", glua.LString(c.Password))
			t.RawSetString("remote", glua.LString(c.Remote))
			return []glua.LValue{t}
		}, func(ls *lstate, rets []glua.LValue) error {
			if len(rets) == 0 || !glua.LVAsBool(rets[0]) {
				return nil
			}
			accepted = true
			id = core.Identity{User: c.User}
			if len(rets) > 1 {
				if t, ok := rets[1].(*glua.LTable); ok {
					if g, ok := t.RawGetString("groups").(*glua.LTable); ok {
						id.Groups = luaStrings(g)
					}
					id.Admin = glua.LVAsBool(t.RawGetString("admin"))
				}
			}
			return nil
		})
		if err != nil {
			h.report(hd.v.file, fmt.Sprintf("%s (authenticate handler %s, treated as refusal)", err.Error(), hd.label()), false)
			continue
		}
		if accepted {
			if c.Password == "" {
				h.log.Warn("authenticate handler accepted an empty password; refused", "handler", hd.label())
				continue
			}
			return id, nil
		}
	}
	return core.Identity{}, core.ErrAuthFailed
}

// Authorize runs the authorize chain.
func (h *Host) Authorize(ctx context.Context, req *core.Request) error {
	return h.runChain(ctx, core.EvAuthorize, req)
}

// Request runs a request event chain (start_request, migrate_request,
// op_request; authorize is accepted too).
func (h *Host) Request(ctx context.Context, event string, req *core.Request) error {
	switch event {
	case core.EvAuthorize, core.EvStartRequest, core.EvMigrateRequest, core.EvOpRequest:
	default:
		return fmt.Errorf("lua: %q is not a request event", event)
	}
	return h.runChain(ctx, event, req)
}

// runChain passes req through every handler of one snapshot in order.
func (h *Host) runChain(ctx context.Context, event string, req *core.Request) error {
	chain := h.snap.Load().chains[event]
	for _, hd := range chain {
		if err := ctx.Err(); err != nil {
			return err
		}
		label := hd.label()
		var rejected *rejectMark
		var changed bool
		d, err := h.invoke(ctx, hd, kindRequest, func(ls *lstate) []glua.LValue {
			ls.lastReq = ls.reqValue(req)
			return []glua.LValue{ls.lastReq}
		}, func(ls *lstate, rets []glua.LValue) error {
			if len(rets) > 0 {
				if ud, ok := rets[0].(*glua.LUserData); ok {
					if m, ok := ud.Value.(*rejectMark); ok {
						rejected = m
						return nil
					}
				}
			}
			var err error
			changed, err = ls.applyReq(ls.lastReq, req, label)
			return err
		})
		step := core.TraceStep{Event: event, Handler: label, Micros: d.Microseconds()}
		switch {
		case err != nil:
			step.Action, step.Detail = "error", err.Error()
			req.Trace = append(req.Trace, step)
			req.Rejected = err.Error()
			h.report(hd.v.file, fmt.Sprintf("%s (handler %s)", err.Error(), label), false)
			return &core.RejectError{Event: event, Handler: label, Reason: err.Error()}
		case rejected != nil:
			step.Action, step.Detail = "rejected", rejected.reason
			req.Trace = append(req.Trace, step)
			req.Rejected = rejected.reason
			return &core.RejectError{Event: event, Handler: label, Reason: rejected.reason}
		case changed:
			step.Action = "modified"
		default:
			step.Action = "approved"
		}
		req.Trace = append(req.Trace, step)
	}
	return nil
}

// RegisterVM runs register_vm handlers; they may set vm.data fields.
func (h *Host) RegisterVM(ctx context.Context, req *core.Request, vm *core.ReqVM) error {
	chain := h.snap.Load().chains[core.EvRegisterVM]
	for _, hd := range chain {
		label := hd.label()
		var rejected *rejectMark
		d, err := h.invoke(ctx, hd, kindRequest, func(ls *lstate) []glua.LValue {
			ls.lastVM = reqVMTable(ls.L, vm)
			return []glua.LValue{ls.reqValue(req), ls.lastVM}
		}, func(ls *lstate, rets []glua.LValue) error {
			if len(rets) > 0 {
				if ud, ok := rets[0].(*glua.LUserData); ok {
					if m, ok := ud.Value.(*rejectMark); ok {
						rejected = m
						return nil
					}
				}
			}
			if dt, ok := ls.lastVM.RawGetString("data").(*glua.LTable); ok {
				vm.Data = luaStrMap(dt)
			}
			return nil
		})
		step := core.TraceStep{Event: core.EvRegisterVM, Handler: label, Micros: d.Microseconds(), Action: "approved", Detail: vm.Name}
		if err != nil || rejected != nil {
			reason := ""
			if err != nil {
				step.Action, reason = "error", err.Error()
				h.report(hd.v.file, fmt.Sprintf("%s (handler %s)", err.Error(), label), false)
			} else {
				step.Action, reason = "rejected", rejected.reason
			}
			step.Detail = vm.Name + ": " + reason
			req.Trace = append(req.Trace, step)
			return &core.RejectError{Event: core.EvRegisterVM, Handler: label, Reason: reason}
		}
		req.Trace = append(req.Trace, step)
	}
	return nil
}

// Wants reports whether a loaded script handles the event (core.EventWanter).
func (h *Host) Wants(event string) bool {
	return !h.closed.Load() && len(h.snap.Load().chains[event]) > 0
}

// Notify queues ev for the notification handlers. It never blocks: when the
// queue is full the event is dropped and counted.
func (h *Host) Notify(ev core.Event) {
	if h.closed.Load() {
		return
	}
	if len(h.snap.Load().chains[ev.Type]) == 0 {
		return
	}
	select {
	case h.notifyQ <- ev:
	default:
		n := h.ndropped.Add(1)
		if n&(n-1) == 0 { // log at powers of two
			h.log.Warn("notification queue full; events dropped", "dropped", n, "type", ev.Type)
		}
	}
}

// dispatch delivers queued notifications in order, one handler chain at a
// time, each chain taken from one snapshot.
func (h *Host) dispatch() {
	defer h.wg.Done()
	for {
		select {
		case <-h.ctx.Done():
			return
		case ev := <-h.notifyQ:
			for _, hd := range h.snap.Load().chains[ev.Type] {
				_, err := h.invoke(h.ctx, hd, kindAsync, func(ls *lstate) []glua.LValue {
					return []glua.LValue{eventTable(ls.L, ev)}
				}, nil)
				if err != nil && h.ctx.Err() == nil {
					h.report(hd.v.file, fmt.Sprintf("%s (handler %s on %s)", err.Error(), hd.label(), ev.Type), ev.Type == core.EvError)
				}
			}
		}
	}
}

// startTimers runs one goroutine per usher.every registration of v until v
// is replaced or unloaded.
func (h *Host) startTimers(v *version) {
	for _, hd := range v.handlers {
		if hd.spec.event != core.EvTimer {
			continue
		}
		hd := hd
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			t := time.NewTicker(hd.spec.every)
			defer t.Stop()
			for {
				select {
				case <-v.ctx.Done():
					return
				case now := <-t.C:
					h.fireTimer(v.ctx, hd, now)
				}
			}
		}()
	}
}

// fireTimer runs one timer handler once (unless switched off).
func (h *Host) fireTimer(ctx context.Context, hd *handler, now time.Time) error {
	if h.snap.Load().off[hd.stats] {
		return nil
	}
	_, err := h.invoke(ctx, hd, kindAsync, func(ls *lstate) []glua.LValue {
		t := ls.L.CreateTable(0, 3)
		t.RawSetString("type", glua.LString(core.EvTimer))
		t.RawSetString("time", unixf(now))
		t.RawSetString("name", glua.LString(hd.spec.name))
		return []glua.LValue{t}
	}, nil)
	if err != nil && ctx.Err() == nil {
		h.report(hd.v.file, fmt.Sprintf("%s (timer %s)", err.Error(), hd.label()), false)
	}
	return err
}

// RunTimers fires every timer of script once, synchronously (tests, tools).
func (h *Host) RunTimers(ctx context.Context, scriptName string) error {
	scriptName = strings.TrimSuffix(scriptName, ".lua")
	h.mu.Lock()
	s := h.scripts[scriptName]
	var v *version
	if s != nil {
		v = s.cur
	}
	h.mu.Unlock()
	if v == nil {
		return fmt.Errorf("script %q is not loaded", scriptName)
	}
	var errs []error
	for _, hd := range v.handlers {
		if hd.spec.event == core.EvTimer {
			if err := h.fireTimer(ctx, hd, time.Now()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// noView is the view before Bind: empty.
type noView struct{}

func (noView) VM(string) (*core.VM, bool)      { return nil, false }
func (noView) VMsOf(string, string) []*core.VM { return nil }
func (noView) VMsOn(string) []*core.VM         { return nil }
func (noView) CountOf(string) int              { return 0 }
func (noView) LNM(string) (*core.LNM, bool)    { return nil, false }
func (noView) LNMs() []*core.LNM               { return nil }
func (noView) Clusters(string) []core.Cluster  { return nil }
func (noView) Domain() string                  { return "" }

// noActions refuses every action.
type noActions struct{}

var errNoActions = errors.New("lua: no controller bound (actions unavailable)")

func (noActions) OpOn(context.Context, core.Identity, core.OpArgs) (*core.Result, error) {
	return nil, errNoActions
}
func (noActions) Migrate(context.Context, core.Identity, core.MigrateArgs) (*core.Result, error) {
	return nil, errNoActions
}
