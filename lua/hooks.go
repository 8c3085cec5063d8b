package lua

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

var _ core.Hooks = (*Host)(nil)

// Authenticate runs the authenticate chain: each handler in order until one
// accepts. A handler error counts as a refusal by that handler (fail
// closed) and the chain continues.
func (h *Host) Authenticate(ctx context.Context, c core.Credentials) (api.Identity, error) {
	chain := h.snap.Load().chains[api.EvAuthenticate]
	for _, hd := range chain {
		if ctx.Err() != nil {
			return api.Identity{}, ctx.Err()
		}
		var id api.Identity
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
			id = api.Identity{User: c.User}
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
	return api.Identity{}, api.ErrUnauthorized
}

// Authorize runs the authorize chain.
func (h *Host) Authorize(ctx context.Context, req *core.Request, d *core.Decision) error {
	return h.runChain(ctx, api.EvAuthorize, req, d)
}

// Request runs a request event chain (start_request, migrate_request,
// op_request; authorize is accepted too).
func (h *Host) Request(ctx context.Context, event string, req *core.Request, d *core.Decision) error {
	switch event {
	case api.EvAuthorize, api.EvStartRequest, api.EvMigrateRequest, api.EvOpRequest:
	default:
		return fmt.Errorf("lua: %q is not a request event", event)
	}
	return h.runChain(ctx, event, req, d)
}

// isReject reports the usher.reject marker among a handler's results.
func isReject(rets []glua.LValue) *rejectMark {
	if len(rets) > 0 {
		if ud, ok := rets[0].(*glua.LUserData); ok {
			if m, ok := ud.Value.(*rejectMark); ok {
				return m
			}
		}
	}
	return nil
}

// runChain passes req through every handler of one snapshot in order; each
// sees the decision so far and may change it as core.FieldRules allow.
func (h *Host) runChain(ctx context.Context, event string, req *core.Request, d *core.Decision) error {
	chain := h.snap.Load().chains[event]
	for _, hd := range chain {
		if err := ctx.Err(); err != nil {
			return err
		}
		label := hd.label()
		var rejected *rejectMark
		var changed bool
		var reqUD *glua.LUserData
		dur, err := h.invoke(ctx, hd, kindRequest, func(ls *lstate) []glua.LValue {
			reqUD = ls.reqValue(req, d, event)
			return []glua.LValue{reqUD}
		}, func(ls *lstate, rets []glua.LValue) error {
			if rejected = isReject(rets); rejected != nil {
				return nil
			}
			var err error
			changed, err = ls.applyReq(reqUD, req, d, label)
			return err
		})
		step := api.TraceStep{Event: event, Handler: label, Micros: dur.Microseconds()}
		switch {
		case err != nil:
			step.Action, step.Detail = "error", err.Error()
			d.Trace = append(d.Trace, step)
			h.report(hd.v.file, fmt.Sprintf("%s (handler %s)", err.Error(), label), false)
			return &core.RejectError{Event: event, Handler: label, Reason: err.Error()}
		case rejected != nil:
			step.Action, step.Detail = "rejected", rejected.reason
			d.Trace = append(d.Trace, step)
			return &core.RejectError{Event: event, Handler: label, Reason: rejected.reason}
		case changed:
			step.Action = "modified"
		default:
			step.Action = "approved"
		}
		d.Trace = append(d.Trace, step)
	}
	return nil
}

// RegisterVM runs register_vm handlers for VM i of a start; they may set
// its data.
func (h *Host) RegisterVM(ctx context.Context, req *core.Request, d *core.Decision, i int) error {
	chain := h.snap.Load().chains[api.EvRegisterVM]
	name := req.VMs[i].Name
	for _, hd := range chain {
		label := hd.label()
		var rejected *rejectMark
		var reqUD *glua.LUserData
		dur, err := h.invoke(ctx, hd, kindRequest, func(ls *lstate) []glua.LValue {
			reqUD = ls.reqValue(req, d, api.EvRegisterVM)
			return []glua.LValue{reqUD, ls.newVMView(req, d, i, api.EvRegisterVM)}
		}, func(ls *lstate, rets []glua.LValue) error {
			if rejected = isReject(rets); rejected != nil {
				return nil
			}
			_, err := ls.applyReq(reqUD, req, d, label)
			return err
		})
		step := api.TraceStep{Event: api.EvRegisterVM, Handler: label, Micros: dur.Microseconds(), Action: "approved", Detail: name}
		if err != nil || rejected != nil {
			reason := ""
			if err != nil {
				step.Action, reason = "error", err.Error()
				h.report(hd.v.file, fmt.Sprintf("%s (handler %s)", err.Error(), label), false)
			} else {
				step.Action, reason = "rejected", rejected.reason
			}
			step.Detail = name + ": " + reason
			d.Trace = append(d.Trace, step)
			return &core.RejectError{Event: api.EvRegisterVM, Handler: label, Reason: reason}
		}
		d.Trace = append(d.Trace, step)
	}
	return nil
}

// Wants reports whether a loaded script handles the event (core.EventWanter).
func (h *Host) Wants(event string) bool {
	return !h.closed.Load() && len(h.snap.Load().chains[event]) > 0
}

// Notify queues ev for the notification handlers. It never blocks: when the
// queue is full the event is dropped and counted.
func (h *Host) Notify(ev api.Event) {
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
					h.report(hd.v.file, fmt.Sprintf("%s (handler %s on %s)", err.Error(), hd.label(), ev.Type), ev.Type == api.EvError)
				}
			}
		}
	}
}

// NotifyNow delivers ev to its handlers at once, in the caller's
// goroutine, and returns their errors (policy tests: usher_test.notify).
func (h *Host) NotifyNow(ctx context.Context, ev api.Event) error {
	var errs []error
	for _, hd := range h.snap.Load().chains[ev.Type] {
		_, err := h.invoke(ctx, hd, kindAsync, func(ls *lstate) []glua.LValue {
			return []glua.LValue{eventTable(ls.L, ev)}
		}, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (handler %s on %s)", err.Error(), hd.label(), ev.Type))
		}
	}
	return errors.Join(errs...)
}

// startTimers runs one goroutine per usher.every registration of v until v
// is replaced or unloaded.
func (h *Host) startTimers(v *version) {
	for _, hd := range v.handlers {
		if hd.spec.event != api.EvTimer {
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
		t.RawSetString("type", glua.LString(api.EvTimer))
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
		if hd.spec.event == api.EvTimer {
			if err := h.fireTimer(ctx, hd, time.Now()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// noView is the view before Bind: empty.
type noView struct{}

func (noView) VM(string) (*api.VM, bool)      { return nil, false }
func (noView) VMsOf(string, string) []*api.VM { return nil }
func (noView) VMsOn(string) []*api.VM         { return nil }
func (noView) CountOf(string) int             { return 0 }
func (noView) LNM(string) (*api.LNM, bool)    { return nil, false }
func (noView) LNMs() []*api.LNM               { return nil }
func (noView) Clusters(string) []api.Cluster  { return nil }
func (noView) Domain() string                 { return "" }

// noActions refuses every action.
type noActions struct{}

var errNoActions = errors.New("lua: no controller bound (actions unavailable)")

func (noActions) OpOn(context.Context, api.Identity, api.OpArgs) (*api.Result, error) {
	return nil, errNoActions
}
func (noActions) Migrate(context.Context, api.Identity, api.MigrateArgs) (*api.Result, error) {
	return nil, errNoActions
}
