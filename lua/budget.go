package lua

import (
	"context"
	"fmt"
	"time"
	"unsafe"

	glua "github.com/yuin/gopher-lua"
)

// This file holds the per-call budget: a context.Context implementation that
// gopher-lua consults before every VM instruction (mainLoopWithContext calls
// ctx.Done() per instruction). Done() runs on the goroutine executing the
// script, so it may inspect the script's own state without data races. It
// enforces:
//
//   - an instruction budget: the handler's own work, counted in VM
//     instructions plus work units the host's functions charge for what
//     they do in Go (strings they build, nodes and VMs they hand out). A
//     busy machine runs the same handler as many instructions as an idle
//     one, so a correct handler is never cut because the machine is slow;
//     time spent waiting (for a Lua state, in usher.op, bcrypt, the store,
//     a site module) costs no instructions at all;
//   - a wall-clock backstop several times what the instruction budget
//     takes on a slow machine, for a handler stuck in something the
//     instructions do not see (time in usher.op, usher.migrate and bcrypt
//     is not charged to it either);
//   - an allocation meter charged by our string/table library wrappers
//     and by the .. operator before it joins (the ConcatHook of the
//     patched gopher-lua): no single operation allocates past the limit;
//   - a reachability estimate of the state's memory (globals, handler
//     closures and the live registers of every frame) taken every 1024
//     instructions at most, and never more often than 8x its own cost.
//
// Once any limit trips, the done channel is closed for good: every further
// instruction raises, so pcall cannot swallow the cut-off, and the host
// discards the state afterwards.

// cutError is the error of a call that exceeded a limit.
type cutError struct{ msg string }

func (e *cutError) Error() string { return e.msg }

type callKind int

const (
	kindLoad    callKind = iota // top level of a script
	kindRequest                 // request chains and authenticate: must not call actions
	kindAsync                   // timers and notifications: may call actions
)

// callCtx is the budget of one handler call. It is used only by the
// goroutine running the call, except that outer cancellation is observed
// through outer.Err().
type callCtx struct {
	outer    context.Context
	ls       *lstate
	kind     callKind
	done     chan struct{}
	err      error
	steps    uint64 // instructions and work units so far
	limit    uint64 // the instruction budget
	start    time.Time
	paused   time.Duration
	backstop time.Duration
	memLimit int64
	alloc    int64 // bytes charged by library wrappers
	nextScan time.Time
	drops    map[string]string // req:drop reasons by VM name
	peakScan int64
}

func newCallCtx(outer context.Context, ls *lstate, kind callKind, limit uint64, backstop time.Duration, memLimit int64) *callCtx {
	now := time.Now()
	return &callCtx{
		outer: outer, ls: ls, kind: kind, done: make(chan struct{}),
		start: now, limit: limit, backstop: backstop, memLimit: memLimit, nextScan: now.Add(time.Millisecond),
	}
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.start.Add(c.backstop + c.paused), true }
func (c *callCtx) Value(any) any               { return nil }

func (c *callCtx) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Done is called by the VM before every instruction.
func (c *callCtx) Done() <-chan struct{} {
	c.steps++
	if c.steps > c.limit {
		c.cut("budget exceeded (%d instructions)", c.limit)
	} else if c.steps&1023 == 0 {
		c.check(true)
	}
	return c.done
}

// cut stops the call for good.
func (c *callCtx) cut(format string, args ...any) {
	select {
	case <-c.done:
		return
	default:
	}
	c.err = &cutError{fmt.Sprintf(format, args...)}
	close(c.done)
}

func (c *callCtx) isCut() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// check tests every limit but the instruction count; scan allows the
// reachability walk.
func (c *callCtx) check(scan bool) {
	if c.isCut() {
		return
	}
	if c.outer != nil && c.outer.Err() != nil {
		c.cut("cancelled: %v", c.outer.Err())
		return
	}
	now := time.Now()
	if now.Sub(c.start)-c.paused > c.backstop {
		c.cut("wall-clock backstop exceeded (%v)", c.backstop)
		return
	}
	if c.alloc > 4*c.memLimit {
		c.cut("memory limit: allocated %d MB in one call (limit %d MB)", c.alloc>>20, c.memLimit>>20)
		return
	}
	if scan && !now.Before(c.nextScan) && c.ls != nil {
		est := c.ls.estimate(c.memLimit)
		took := time.Since(now)
		if est > c.peakScan {
			c.peakScan = est
		}
		if est > c.memLimit {
			c.cut("memory limit: about %d MB reachable (limit %d MB)", est>>20, c.memLimit>>20)
			return
		}
		c.nextScan = time.Now().Add(max(8*took, time.Millisecond)) // scans cost at most about a ninth of the call
	}
}

// work charges units of Go-side work done for the script (a node handed
// to it, a string built) as instructions, and raises if the budget is
// spent.
func (c *callCtx) work(L *glua.LState, units uint64) {
	if c == nil || units == 0 {
		return
	}
	c.steps += units
	if c.steps > c.limit {
		c.cut("budget exceeded (%d instructions)", c.limit)
		L.RaiseError("%s", c.err.Error())
	}
}

// charge accounts n bytes about to be allocated by a library function (or
// the .. operator) and raises if it would exceed the limit. Single results
// are capped at the memory limit; the total per call at four times it.
// Building n bytes costs n/64 instructions of work.
func (c *callCtx) charge(L *glua.LState, n int64) {
	if c == nil {
		return
	}
	if n > c.memLimit {
		c.cut("memory limit: result of %d bytes exceeds %d MB", n, c.memLimit>>20)
		L.RaiseError("%s", c.err.Error())
	}
	c.alloc += n
	c.work(L, uint64(n>>6))
	c.check(false)
	if c.isCut() {
		L.RaiseError("%s", c.err.Error())
	}
}

// pause runs f without charging its wall time to the backstop (it costs
// no instructions either).
func (c *callCtx) pause(f func()) {
	if c == nil {
		f()
		return
	}
	t0 := time.Now()
	defer func() { c.paused += time.Since(t0) }()
	f()
}

// estimate walks what the state can reach and returns an approximate byte
// count, stopping early once over limit.
func (ls *lstate) estimate(limit int64) int64 {
	// One walker per state, its maps cleared rather than rebuilt: a scan
	// runs every few milliseconds of a long call.
	w := &ls.walk
	if w.seen == nil {
		w.seen, w.strs = map[unsafe.Pointer]struct{}{}, map[*byte]struct{}{}
		w.pair = w.visitPair
	}
	clear(w.seen)
	clear(w.strs)
	w.total, w.nodes, w.limit, w.maxNodes = 0, 0, limit, int(limit/32)
	L := ls.L
	w.value(L.G.Global)
	for _, f := range ls.handlers {
		if f != nil {
			w.value(f)
		}
	}
	for level := 0; level < 300 && !w.over(); level++ {
		dbg, ok := L.GetStack(level)
		if !ok {
			break
		}
		for i := 1; i <= 256 && !w.over(); i++ {
			name, v := L.GetLocal(dbg, i)
			if name == "" {
				break
			}
			w.value(v)
		}
	}
	if w.nodes > w.maxNodes && w.total <= limit {
		w.total = limit + 1
	}
	return w.total
}

type walker struct {
	seen     map[unsafe.Pointer]struct{}
	strs     map[*byte]struct{}
	total    int64
	nodes    int
	limit    int64
	maxNodes int
	pair     func(k, v glua.LValue) // visitPair, bound once
}

func (w *walker) visitPair(k, val glua.LValue) {
	if w.over() {
		return
	}
	w.total += 40
	w.value(k)
	w.value(val)
}

func (w *walker) over() bool { return w.total > w.limit || w.nodes > w.maxNodes }

func (w *walker) value(v glua.LValue) {
	if w.over() {
		if w.nodes > w.maxNodes && w.total <= w.limit {
			w.total = w.limit + 1 // too many objects to be under the limit
		}
		return
	}
	w.nodes++
	switch x := v.(type) {
	case glua.LString:
		if len(x) >= 256 {
			p := unsafe.StringData(string(x))
			if _, ok := w.strs[p]; ok {
				return
			}
			w.strs[p] = struct{}{}
		}
		w.total += int64(len(x)) + 16
	case *glua.LTable:
		p := unsafe.Pointer(x)
		if _, ok := w.seen[p]; ok {
			return
		}
		w.seen[p] = struct{}{}
		w.total += 64
		x.ForEach(w.pair)
		if x.Metatable != nil {
			w.value(x.Metatable)
		}
	case *glua.LFunction:
		p := unsafe.Pointer(x)
		if _, ok := w.seen[p]; ok {
			return
		}
		w.seen[p] = struct{}{}
		w.total += 64
		for _, uv := range x.Upvalues {
			if uv != nil {
				w.value(uv.Value())
			}
		}
	case *glua.LUserData:
		w.total += 48
		// Request and VM views hold tables of the script's (vm.data,
		// req.lnms, fields it set) that nothing else may reach.
		switch x.Value.(type) {
		case *vmView, *reqView, *identityView:
			p := unsafe.Pointer(x)
			if _, ok := w.seen[p]; ok {
				return
			}
			w.seen[p] = struct{}{}
		}
		switch view := x.Value.(type) {
		case *vmView:
			for _, t := range [...]*glua.LTable{view.data, view.extra} {
				if t != nil {
					w.value(t)
				}
			}
		case *reqView:
			if view.user != nil {
				w.value(view.user)
			}
			for _, t := range [...]*glua.LTable{view.vms, view.lnms, view.args, view.extra} {
				if t != nil {
					w.value(t)
				}
			}
		case *identityView:
			if view.groups != nil {
				w.value(view.groups)
			}
		}
	default:
		w.total += 16
	}
}
