// Package lua is Usher's policy engine: the production implementation of
// core.Hooks. Site policy (who may log in, who may touch which VM, quotas,
// placement, rebalancing) lives in small Lua scripts; this package loads,
// sandboxes, budgets and hot-reloads them and runs them as the plugin chains
// of the Usher paper ("Plugins"): handlers register for events with an
// order, request events pass a Request that each handler may approve,
// modify or reject, and the chain runs in order.
//
// What this package may touch (it imports api, core and gopher-lua, and
// none of the rooms around it below):
//
//   - core (read only): the Hooks, StateView and Actions interfaces and the
//     data types. The host never changes controller state except through
//     core.Actions, called as core.SystemIdentity() from timers and
//     notification handlers.
//   - the policy directories (read only, watched with fsnotify), the
//     htpasswd files scripts name through usher.read_htpasswd, and the
//     key-value store file (Options.StorePath).
//
// What scripts may touch: only the usher module (docs/lua-api.md), the
// site modules the host is given (Options.Modules: read-only globals such
// as ldap or sql, built outside this package) and the base, table, string
// and math libraries, with load/dofile/os/io/debug/coroutine removed and
// require replaced by a sandboxed one that only loads lib/<name>.lua from
// the policy directories (require.go). Every handler call runs under a
// wall-clock budget and a memory meter (see budget.go); a script that
// exceeds either is cut off with an error naming script and handler, and
// its Lua state is discarded and rebuilt from the compiled proto.
//
// Layout: host.go (Options, Host, loading, registry snapshots,
// Register/Unregister/SetActive), pool.go (per-script state pools, calls),
// budget.go (time and memory limits), state.go and strlib.go (sandbox and
// metered string functions; internal/pm is a metered copy of gopher-lua's
// pattern matcher), api.go (the usher module), convert.go (Go⇄Lua),
// reqview.go and lnmview.go (request, VM and node views), hooks.go
// (core.Hooks, notifications, timers), watch.go (hot reload), require.go
// (policy libraries), store.go and status.go; module.go (the Module
// interface site modules implement and the ModuleState their functions
// use) and export.go (the helpers modules and tooling share, and the
// entry points of policy tooling: Compile, Host.CheckFile, Host.Sandbox).
//
// Around it, each room imports this package and never the reverse:
// lua/modules is the one list of site modules and parses policy.modules;
// lua/modules/ldap, dns, sql and fs are the modules; lua/modules/fakes
// holds their in-memory stand-ins, used only by lua/policytool (Check,
// RunTests, FixtureView) and tests.
package lua
