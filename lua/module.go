package lua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	glua "github.com/yuin/gopher-lua"
)

// Module is a site-integration module (ldap, dns, sql, fs: the packages
// under lua/modules): a table of Go functions installed as a read-only
// Lua global in every state of every script. The host owns the modules it
// is given (Options.Modules) and closes them with itself.
type Module interface {
	// Name is the Lua global the table is installed as (a lower-case
	// identifier, e.g. "ldap"); lua/modules uses it as the module's
	// section of policy.modules too.
	Name() string
	// Table builds the module's table in one Lua state, once, when the
	// state is created. Its functions run on that state's goroutine and
	// reach the host through s (module timeouts, the budget, the script's
	// config). nil installs nothing.
	Table(s *ModuleState) *glua.LTable
	// Close releases the module's connections and databases.
	Close() error
}

// DefaultModuleTimeout bounds one network or database call of a module
// when Options.ModuleTimeout is zero.
const DefaultModuleTimeout = 5 * time.Second

// ModuleState is one Lua state as a module's functions see it: the state
// itself, the host's limits and the script it belongs to. Its methods
// may be called only from the state's own goroutine (inside the module's
// Lua functions).
type ModuleState struct {
	ls *lstate
}

// L is the Lua state the module's table lives in.
func (s *ModuleState) L() *glua.LState { return s.ls.L }

// Script is the file name of the script the state runs ("auth_ldap.lua").
func (s *ModuleState) Script() string { return s.ls.v.file }

// Config is the script's usher.config section (Options.Config), nil when
// it has none. Modules must not change it.
func (s *ModuleState) Config() map[string]any { return s.ls.v.config }

// Logger is the host's logger, naming the script.
func (s *ModuleState) Logger() *slog.Logger { return s.ls.v.h.log.With("script", s.ls.v.file) }

// Context is the context of the current handler call (its request's
// deadline, the host shutting down), or the host's outside a call. A
// module holding something across several calls (an SQL transaction)
// bounds it by this.
func (s *ModuleState) Context() context.Context {
	if c := s.ls.call; c != nil && c.outer != nil {
		return c.outer
	}
	return s.ls.v.h.ctx
}

// Net runs f, a network or database call, under the module timeout
// (Options.ModuleTimeout) and the handler's context. The wait is not
// charged to the handler's budget. An error of f while the context has
// ended says so.
func (s *ModuleState) Net(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(s.Context(), s.ls.v.h.opts.ModuleTimeout)
	defer cancel()
	var err error
	s.ls.call.pause(func() { err = f(ctx) })
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return err
}

// Pause runs f, blocking local work (a file system call), without
// charging its time to the handler's budget and without a timeout.
func (s *ModuleState) Pause(f func()) { s.ls.call.pause(f) }

// Charge accounts bytes the module is about to hand to the script (rows
// of a query) to the call's memory and instruction budget; it raises a
// Lua error in L when that exceeds the budget.
func (s *ModuleState) Charge(L *glua.LState, bytes int64) { s.ls.call.charge(L, bytes) }

// Cut is the error that cut the current call off (budget, memory,
// cancellation), nil while it runs on. A module that catches Lua errors
// itself (a protected call inside a transaction) re-raises this one.
func (s *ModuleState) Cut() error {
	if c := s.ls.call; c != nil && c.isCut() {
		return c.err
	}
	return nil
}

// checkModules refuses modules whose names are not identifiers, repeat
// or would shadow a global of the sandbox.
func checkModules(mods []Module) error {
	if len(mods) == 0 {
		return nil
	}
	L := newSandbox(&lstate{}, slog.New(slog.DiscardHandler), "modules")
	defer L.Close()
	seen := map[string]bool{}
	var errs []error
	for _, m := range mods {
		n := m.Name()
		switch {
		case !libNameRE.MatchString(n):
			errs = append(errs, fmt.Errorf("module %q: name must be a lower-case identifier", n))
		case seen[n]:
			errs = append(errs, fmt.Errorf("module %q: given twice", n))
		case n == "usher" || n == "usher_test" || L.GetGlobal(n) != glua.LNil:
			errs = append(errs, fmt.Errorf("module %q: would shadow the global of that name", n))
		}
		seen[n] = true
	}
	return errors.Join(errs...)
}

// installModules sets each module's global in ls, read-only.
func (ls *lstate) installModules() {
	mods := ls.v.h.opts.Modules
	if len(mods) == 0 {
		return
	}
	s := &ModuleState{ls: ls}
	g := ls.L.G.Global
	for _, m := range mods {
		t := m.Table(s)
		if t == nil {
			continue
		}
		g.RawSetString(m.Name(), t)
		lockTable(ls.L, g, m.Name())
	}
}

// closeModules closes every module.
func closeModules(mods []Module) error {
	var errs []error
	for _, m := range mods {
		if err := m.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing module %s: %w", m.Name(), err))
		}
	}
	return errors.Join(errs...)
}
