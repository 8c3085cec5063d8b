package lua

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	glua "github.com/yuin/gopher-lua"
)

// lstate is one Lua state of one script version. It is used by one
// goroutine at a time: it lives in the version's pool (a buffered channel)
// when idle.
type lstate struct {
	L        *glua.LState
	v        *version
	handlers []*glua.LFunction // by regSpec.id
	regs     []regSpec         // filled while the top level runs
	top      bool              // running the top level
	call     *callCtx          // current call
	rejectUD *glua.LUserData   // marker returned by usher.reject
	dropFn   *glua.LFunction   // req:drop
	memLimit int64
	views    []*vmView                 // request VM views of the current call
	viewUD   map[vmKey]*glua.LUserData // the view userdata of each VM of the current call
	proxies  map[*glua.LTable]proxyOf  // read-only proxies of the current call
	reqs     []*reqView                // request views of the current call
	reqMeta  *glua.LTable              // metatable of request views (reqMT)
	idMeta   *glua.LTable              // metatable of identity views (identityMT)
	walk     walker                    // the memory estimate's, reused
	loaded   map[string]glua.LValue    // require: library results of this state
	loading  map[string]bool           // require: libraries running their top level
}

// rejectMark is the value inside usher.reject's userdata.
type rejectMark struct{ reason string }

// newState builds a sandboxed state for v and runs the script's top level.
func (v *version) newState() (*lstate, error) {
	h := v.h
	ls := &lstate{v: v, memLimit: int64(h.opts.MemLimitMB) << 20}
	ls.L = newSandbox(ls, h.log, v.file)
	ls.installAPI()
	ls.top = true
	defer func() { ls.top = false }()
	fn := ls.L.NewFunctionFromProto(ls.v.proto)
	_, err := ls.pcall(h.ctx, kindLoad, fn, nil, 0)
	if err != nil {
		ls.L.Close()
		return nil, err
	}
	return ls, nil
}

// acquire takes a state from the pool, creating one if the pool has not
// reached its size, otherwise waiting (bounded by ctx).
func (v *version) acquire(ctx context.Context) (*lstate, error) {
	select {
	case ls := <-v.pool:
		return ls, nil
	default:
	}
	for {
		n := v.created.Load()
		if int(n) >= v.size {
			break
		}
		if v.created.CompareAndSwap(n, n+1) {
			ls, err := v.newState()
			if err != nil {
				v.created.Add(-1)
				return nil, err
			}
			if !sameRegs(ls.regs, v.regs) {
				v.h.log.Warn("script top level registered differently in a new state; using the first load's registrations", "script", v.file)
			}
			return ls, nil
		}
	}
	select {
	case ls := <-v.pool:
		return ls, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: no free Lua state: %w", v.file, ctx.Err())
	}
}

// release returns ls to the pool, or discards it (poisoned after a cut-off
// or a Go panic) so a fresh state is built from the proto when next needed.
func (v *version) release(ls *lstate, discard bool) {
	ls.call = nil
	ls.endViews()
	if discard {
		ls.L.Close()
		v.created.Add(-1)
		return
	}
	select {
	case v.pool <- ls:
	default:
		ls.L.Close()
		v.created.Add(-1)
	}
}

func sameRegs(a, b []regSpec) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].event != b[i].event || a[i].name != b[i].name || a[i].order != b[i].order {
			return false
		}
	}
	return true
}

// callError is a failed handler call.
type callError struct {
	msg string // "quota.lua:12: boom" or "quota.lua: budget exceeded (100ms)"
	cut bool   // a limit was exceeded; the state is discarded
}

func (e *callError) Error() string { return e.msg }

// pcall runs fn(args...) under a fresh budget and returns nret results.
func (ls *lstate) pcall(outer context.Context, kind callKind, fn *glua.LFunction, args []glua.LValue, nret int) ([]glua.LValue, error) {
	h := ls.v.h
	limit, backstop := h.opts.Instructions, h.opts.Budget
	if kind == kindLoad {
		limit, backstop = 10*limit, max(backstop, 5*time.Second) // a top level may do more work, once
	}
	c := newCallCtx(outer, ls, kind, limit, backstop, ls.memLimit)
	ls.call = c
	L := ls.L
	L.SetContext(c)
	base := L.GetTop()
	L.Push(fn)
	for _, a := range args {
		L.Push(a)
	}
	err := L.PCall(len(args), glua.MultRet, nil)
	L.RemoveContext()
	if err != nil {
		L.SetTop(base)
		msg := luaErrMessage(err)
		if c.isCut() {
			msg = ls.v.file + ": " + c.err.Error()
			var ae *glua.ApiError
			if errors.As(err, &ae) {
				if f, line := splitLoc(luaErrMessage(err)); f != "" {
					msg = fmt.Sprintf("%s:%d: %s", f, line, c.err.Error())
				}
			}
			return nil, &callError{msg: msg, cut: true}
		}
		var ae *glua.ApiError
		if errors.As(err, &ae) && ae.Type == glua.ApiErrorPanic {
			return nil, &callError{msg: ls.v.file + ": internal error: " + msg, cut: true}
		}
		if !strings.Contains(msg, ".lua") {
			msg = ls.v.file + ": " + msg
		}
		return nil, &callError{msg: msg}
	}
	n := L.GetTop() - base
	var rets []glua.LValue
	if nret != 0 && n > 0 {
		if nret > 0 && n > nret {
			n = nret
		}
		rets = make([]glua.LValue, n)
		for i := 0; i < n; i++ {
			rets[i] = L.Get(base + 1 + i)
		}
	}
	L.SetTop(base)
	if c.isCut() { // tripped in the last instructions but returned
		return nil, &callError{msg: ls.v.file + ": " + c.err.Error(), cut: true}
	}
	return rets, nil
}

// fnFor resolves the Lua function of a handler in ls.
func (ls *lstate) fnFor(hd *handler) (*glua.LFunction, error) {
	if hd.spec.global != "" {
		if f, ok := ls.L.GetGlobal(hd.spec.global).(*glua.LFunction); ok {
			return f, nil
		}
		return nil, fmt.Errorf("%s: global function %q not found", ls.v.file, hd.spec.global)
	}
	if hd.spec.id < 0 || hd.spec.id >= len(ls.handlers) || ls.handlers[hd.spec.id] == nil {
		return nil, fmt.Errorf("%s: handler %q missing in state", ls.v.file, hd.spec.name)
	}
	return ls.handlers[hd.spec.id], nil
}

// invoke runs one handler: it takes a state, builds the arguments in it,
// calls, lets after() convert results back while the state is still held,
// records stats, and returns the state (or discards it after a cut-off).
func (h *Host) invoke(ctx context.Context, hd *handler, kind callKind,
	build func(ls *lstate) []glua.LValue, after func(ls *lstate, rets []glua.LValue) error) (time.Duration, error) {
	t0 := time.Now()
	ls, err := hd.v.acquire(ctx)
	if err != nil {
		hd.stats.record(time.Since(t0), true)
		return time.Since(t0), err
	}
	discard := false
	defer func() { hd.v.release(ls, discard) }()
	fn, err := ls.fnFor(hd)
	if err != nil {
		hd.stats.record(time.Since(t0), true)
		return time.Since(t0), err
	}
	args := build(ls)
	rets, err := ls.pcall(ctx, kind, fn, args, -1)
	if err == nil && after != nil {
		err = after(ls, rets)
	}
	var ce *callError
	if errors.As(err, &ce) && ce.cut {
		discard = true
		hd.stats.cuts.Add(1)
		h.log.Warn("lua state discarded after cut-off", "script", hd.v.file, "handler", hd.spec.name, "err", ce.msg)
	}
	d := time.Since(t0)
	hd.stats.record(d, err != nil)
	return d, err
}
