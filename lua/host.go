package lua

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
	"golang.org/x/crypto/bcrypt"

	"github.com/fsnotify/fsnotify"
	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/core"
)

// Options configure a Host.
type Options struct {
	Dirs    []string // policy dirs: shipped scripts dir first, then site dirs
	Enabled []string // Dirs[0] only: base names to load; nil = all
	Watch   bool     // hot-reload on file changes
	// Instructions is the budget of one handler call: Lua VM instructions
	// plus the work the host's functions do for it (default
	// DefaultInstructions; a script's top level gets ten times as much,
	// once). Budget is the wall-clock backstop of one call (default 2s),
	// for what instructions do not count.
	Instructions uint64
	Budget       time.Duration
	MemLimitMB   int                       // per call / state (default 64)
	PoolSize     int                       // Lua states per script (default GOMAXPROCS*2)
	Config       map[string]map[string]any // usher.config per script base name
	StorePath    string                    // persistent key-value store, a SQLite file ("" = in memory)
	StoreLimits  StoreLimits               // bounds of usher.store
	// Store, when set, is usher.store instead of the SQLite file at
	// StorePath (highly available controllers: etcd). The host does not
	// close it.
	Store KV
	// Files are what scripts may read besides the files their own Config
	// section names (usher.read_htpasswd).
	Files  []string
	Logger *slog.Logger
	// Modules are the site-integration modules (lua/modules builds them
	// from policy.modules), installed as read-only globals in every
	// state. The host owns them: it closes them on Close, and New closes
	// them when it fails.
	Modules []Module
	// ImageDir is the site image store usher.images() lists ("" = none).
	ImageDir string
	// ModuleTimeout bounds one network or database call of a module
	// (default DefaultModuleTimeout). The wait is not charged to the
	// handler's budget; the handler's own context still cancels it.
	ModuleTimeout time.Duration
}

// DefaultInstructions is the default instruction budget of a handler call:
// about 125 ms of Lua on the project's machine (40 million instructions a
// second), 500 ms on one four times slower. The shipped policies take a
// few thousand per request; a placement over 10,000 nodes with the node
// query a few hundred thousand.
const DefaultInstructions = 5_000_000

// NotifyQueue is the capacity of the asynchronous notification queue.
const NotifyQueue = 4096

// Host runs Lua policy scripts and implements core.Hooks.
type Host struct {
	opts  Options
	log   *slog.Logger
	store *kvStore // the default store (nil when Options.Store is used)
	kv    KV

	view atomic.Pointer[viewBox]
	sink atomic.Pointer[func(api.Event)]

	mu       sync.Mutex // guards scripts, runtime registrations, flags, rebuilds
	scripts  map[string]*script
	disabled map[string]bool  // script/event pairs unregistered at runtime
	inactive map[string]bool  // event/target pairs switched off by set_active
	offs     map[*hstats]bool // handlers removed with usher.off at run time
	snap     atomic.Pointer[registry]

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started atomic.Bool
	closed  atomic.Bool

	notifyQ  chan api.Event
	ndropped atomic.Uint64
	watcher  *fsnotify.Watcher
	onReload atomic.Pointer[func(path string, err error)] // test hook

	standIns sync.Map // bcrypt cost → a stand-in hash (bcrypt_check of an unknown user)

	libMu     sync.Mutex                     // guards libProtos
	libProtos map[string]*glua.FunctionProto // require: by path + content hash
}

type viewBox struct {
	view core.StateView
	act  core.Actions
}

// script is one policy file by base name; cur is its live version.
type script struct {
	name      string
	path      string
	cur       *version
	lastErr   string
	lastErrAt time.Time
	runtime   []*handler // registered with Register; bound to cur on rebuild
	libs      []string   // libraries required by cur or by the last load attempt
}

// regSpec is one registration made by a script's top level.
type regSpec struct {
	id     int // index into lstate.handlers
	event  string
	order  int
	name   string
	every  time.Duration
	global string // runtime registration: global function name
}

// version is one loaded, immutable revision of a script.
type version struct {
	h        *Host
	name     string // base name, e.g. "quota"
	file     string // "quota.lua"
	dir      string
	hash     string
	loadedAt time.Time
	proto    *glua.FunctionProto
	regs     []regSpec
	handlers []*handler // one per reg, stats live here
	pool     chan *lstate
	created  atomic.Int32
	size     int
	ctx      context.Context // timers
	cancel   context.CancelFunc
	config   map[string]any

	libMu sync.Mutex         // guards libs, tried
	libs  map[string]*libRef // require: library versions this version runs
	tried map[string]bool    // require: every name required, found or not
}

// handler is one entry of an event chain. Snapshots hold fresh copies, so a
// handler value is never mutated once published.
type handler struct {
	v     *version
	spec  regSpec
	seq   int
	stats *hstats
	name  string // label(), made once: traces name it on every call
}

func newHandler(v *version, spec regSpec, seq int) *handler {
	return &handler{v: v, spec: spec, seq: seq, stats: &hstats{}, name: v.file + ":" + spec.name}
}

func (hd *handler) label() string { return hd.name }

// registry is an immutable snapshot: event → ordered active handlers.
type registry struct {
	chains map[string][]*handler
	off    map[*hstats]bool // inactive handlers (timers consult this)
}

// New creates a host. Call Bind, then Start.
func New(opts Options) (h *Host, err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, closeModules(opts.Modules))
		}
	}()
	if err := checkModules(opts.Modules); err != nil {
		return nil, fmt.Errorf("policy modules: %w", err)
	}
	if opts.ModuleTimeout <= 0 {
		opts.ModuleTimeout = DefaultModuleTimeout
	}
	if opts.Instructions == 0 {
		opts.Instructions = DefaultInstructions
	}
	if opts.Budget <= 0 {
		opts.Budget = 2 * time.Second
	}
	if opts.MemLimitMB <= 0 {
		opts.MemLimitMB = 64
	}
	if opts.PoolSize <= 0 {
		opts.PoolSize = runtime.GOMAXPROCS(0) * 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var st *kvStore
	var kv KV = opts.Store
	if kv == nil {
		if st, err = openStore(opts.StorePath, opts.StoreLimits, opts.Logger); err != nil {
			return nil, err
		}
		kv = st
	}
	ctx, cancel := context.WithCancel(context.Background())
	h = &Host{
		opts: opts, log: opts.Logger.With("component", "lua"), store: st, kv: kv,
		scripts: map[string]*script{}, disabled: map[string]bool{}, inactive: map[string]bool{}, offs: map[*hstats]bool{},
		ctx: ctx, cancel: cancel, notifyQ: make(chan api.Event, NotifyQueue),
	}
	h.view.Store(&viewBox{view: noView{}, act: noActions{}})
	h.snap.Store(&registry{chains: map[string][]*handler{}, off: map[*hstats]bool{}})
	return h, nil
}

// Bind gives the host the controller's state view and actions.
func (h *Host) Bind(view core.StateView, act core.Actions) {
	if view == nil {
		view = noView{}
	}
	if act == nil {
		act = noActions{}
	}
	h.view.Store(&viewBox{view: view, act: act})
}

// SetErrorSink receives load and runtime errors as "error" events.
func (h *Host) SetErrorSink(f func(api.Event)) {
	if f == nil {
		h.sink.Store(nil)
		return
	}
	h.sink.Store(&f)
}

// Start loads every script, starts the notification dispatcher and, with
// Options.Watch, the file watcher. The error lists scripts that failed; the
// host is usable regardless.
func (h *Host) Start(ctx context.Context) error {
	if !h.started.CompareAndSwap(false, true) {
		return errors.New("lua host already started")
	}
	h.wg.Add(1)
	go h.dispatch()
	var errs []error
	for _, p := range h.scanDirs() {
		if err := h.loadPath(p); err != nil {
			errs = append(errs, err)
		}
	}
	if h.opts.Watch {
		if err := h.startWatch(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close stops timers, the watcher and the dispatcher.
func (h *Host) Close() error {
	if !h.closed.CompareAndSwap(false, true) {
		return nil
	}
	h.cancel()
	if h.watcher != nil {
		h.watcher.Close()
	}
	h.mu.Lock()
	for _, s := range h.scripts {
		if s.cur != nil {
			s.cur.cancel()
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
	var err error
	if h.store != nil {
		err = h.store.close()
	}
	return errors.Join(err, closeModules(h.opts.Modules))
}

// scanDirs lists the script files to load, later dirs overriding earlier
// ones for the same base name.
func (h *Host) scanDirs() []string {
	byName := map[string]string{}
	var order []string
	for i, d := range h.opts.Dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			h.log.Warn("policy dir unreadable", "dir", d, "err", err)
			continue
		}
		for _, e := range ents {
			if e.IsDir() || !isScriptName(e.Name()) {
				continue
			}
			base := strings.TrimSuffix(e.Name(), ".lua")
			if i == 0 && !h.enabled(base) {
				continue
			}
			if _, ok := byName[base]; !ok {
				order = append(order, base)
			}
			byName[base] = filepath.Join(d, e.Name())
		}
	}
	out := make([]string, 0, len(order))
	for _, b := range order {
		out = append(out, byName[b])
	}
	return out
}

func (h *Host) enabled(base string) bool {
	if h.opts.Enabled == nil {
		return true
	}
	for _, e := range h.opts.Enabled {
		if e == base {
			return true
		}
	}
	return false
}

// isScriptName accepts x.lua, rejects tests and editor droppings.
func isScriptName(n string) bool {
	return strings.HasSuffix(n, ".lua") && !strings.HasSuffix(n, "_test.lua") &&
		!strings.HasPrefix(n, ".") && !strings.HasPrefix(n, "#") && len(n) > 4
}

// report logs an error, records it on the script and forwards it.
func (h *Host) report(scriptName, msg string, fromErrorHandler bool) {
	_, line := splitLoc(msg)
	h.log.Error("policy error", "script", scriptName, "line", line, "err", msg)
	if fromErrorHandler {
		return // an "error" handler failing must not feed itself
	}
	if f := h.sink.Load(); f != nil {
		(*f)(api.Event{Type: api.EvError, Time: time.Now(), Error: msg,
			Detail: map[string]string{"script": scriptName, "line": fmt.Sprint(line), "message": msg}})
	}
}

// loadPath (re)loads the script at path. A missing file unloads it. On any
// failure the previous version stays live.
func (h *Host) loadPath(path string) error {
	file := filepath.Base(path)
	name := strings.TrimSuffix(file, ".lua")
	src, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		h.unload(name, path)
		return nil
	}
	h.mu.Lock()
	s := h.scripts[name]
	if s == nil {
		s = &script{name: name, path: path}
		h.scripts[name] = s
	}
	h.mu.Unlock()
	if err != nil {
		return h.failLoad(s, fmt.Errorf("%s: %v", file, err))
	}
	sum := sha256.Sum256(src)
	hash := hex.EncodeToString(sum[:])[:12]
	h.mu.Lock()
	cur, samePath := s.cur, s.path == path
	h.mu.Unlock()
	if cur != nil && cur.hash == hash && samePath && cur.libsCurrent() {
		return nil
	}
	v, tried, err := h.newVersionLibs(name, path, src, hash)
	if err != nil {
		h.mu.Lock()
		s.libs = mergeNames(tried, s.libs)
		h.mu.Unlock()
		return h.failLoad(s, err)
	}
	h.mu.Lock()
	old := s.cur
	s.cur, s.path, s.lastErr, s.libs = v, path, "", v.libNames()
	h.rebuildLocked()
	h.mu.Unlock()
	if old != nil {
		old.cancel()
	}
	h.startTimers(v)
	h.log.Info("policy loaded", "script", file, "hash", hash, "handlers", len(v.regs))
	return nil
}

func (h *Host) failLoad(s *script, err error) error {
	h.mu.Lock()
	s.lastErr, s.lastErrAt = err.Error(), time.Now()
	h.mu.Unlock()
	h.report(s.name+".lua", err.Error(), false)
	return err
}

func (h *Host) unload(name, path string) {
	h.mu.Lock()
	s := h.scripts[name]
	if s == nil || s.path != path {
		h.mu.Unlock()
		return
	}
	delete(h.scripts, name)
	old := s.cur
	h.rebuildLocked()
	h.mu.Unlock()
	if old != nil {
		old.cancel()
	}
	h.log.Info("policy unloaded", "script", name+".lua")
}

// newVersion compiles src and runs its top level in a first state. Only a
// fully successful load yields a version.
func (h *Host) newVersion(name, path string, src []byte, hash string) (*version, error) {
	v, _, err := h.newVersionLibs(name, path, src, hash)
	return v, err
}

// newVersionLibs is newVersion that also returns the libraries the top
// level required (or tried to), also when the load failed.
func (h *Host) newVersionLibs(name, path string, src []byte, hash string) (*version, []string, error) {
	file := name + ".lua"
	proto, err := compile(src, file)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(h.ctx)
	v := &version{
		h: h, name: name, file: file, dir: filepath.Dir(path), hash: hash, loadedAt: time.Now(),
		proto: proto, pool: make(chan *lstate, h.opts.PoolSize), size: h.opts.PoolSize,
		ctx: ctx, cancel: cancel, config: h.opts.Config[name],
	}
	ls, err := v.newState()
	if err != nil {
		cancel()
		return nil, v.libNames(), err
	}
	v.regs = ls.regs
	for i, r := range v.regs {
		v.handlers = append(v.handlers, newHandler(v, r, i))
	}
	v.created.Add(1)
	v.pool <- ls
	return v, v.libNames(), nil
}

// mergeNames returns the sorted union of a and b.
func mergeNames(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range append(append([]string{}, a...), b...) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// rebuildLocked publishes a new registry snapshot. h.mu must be held.
func (h *Host) rebuildLocked() {
	chains := map[string][]*handler{}
	off := map[*hstats]bool{}
	for _, s := range h.scripts {
		if s.cur == nil {
			continue
		}
		all := make([]*handler, 0, len(s.cur.handlers)+len(s.runtime))
		for _, hd := range s.cur.handlers {
			c := *hd
			all = append(all, &c)
		}
		for _, rh := range s.runtime {
			c := *rh
			c.v = s.cur
			all = append(all, &c)
		}
		for _, hd := range all {
			if !h.activeLocked(s.name, hd) {
				off[hd.stats] = true
				continue
			}
			if hd.spec.event == api.EvTimer {
				continue
			}
			chains[hd.spec.event] = append(chains[hd.spec.event], hd)
		}
	}
	for _, c := range chains {
		sort.SliceStable(c, func(i, j int) bool {
			a, b := c[i], c[j]
			if a.spec.order != b.spec.order {
				return a.spec.order < b.spec.order
			}
			if a.v.name != b.v.name {
				return a.v.name < b.v.name
			}
			return a.seq < b.seq
		})
	}
	h.snap.Store(&registry{chains: chains, off: off})
}

func (h *Host) activeLocked(scriptName string, hd *handler) bool {
	ev := hd.spec.event
	return !h.offs[hd.stats] && !h.disabled[scriptName+"\x00"+ev] &&
		!h.inactive[ev+"\x00"+scriptName] && !h.inactive[ev+"\x00"+hd.spec.name] &&
		!h.inactive["\x00"+scriptName]
}

// Register adds a runtime registration (the paper's register_plugin): the
// script's global function handler is called for event with the given order.
func (h *Host) Register(scriptName, event, handlerName string, order int) error {
	scriptName = strings.TrimSuffix(scriptName, ".lua")
	if !knownEvent(event) {
		return fmt.Errorf("unknown event %q", event)
	}
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
	ls, err := v.acquire(h.ctx)
	if err != nil {
		return err
	}
	_, isFn := ls.L.GetGlobal(handlerName).(*glua.LFunction)
	v.release(ls, false)
	if !isFn {
		return fmt.Errorf("%s has no global function %q", v.file, handlerName)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.disabled, scriptName+"\x00"+event)
	s.runtime = append(s.runtime, newHandler(v,
		regSpec{id: 0, event: event, order: order, name: handlerName, global: handlerName}, 1000+len(s.runtime)))
	h.rebuildLocked()
	return nil
}

// Unregister removes every handler of script on event (the paper's
// unregister_plugin): runtime registrations are forgotten, top-level ones
// are switched off until Register is called for the pair again.
func (h *Host) Unregister(scriptName, event string) error {
	scriptName = strings.TrimSuffix(scriptName, ".lua")
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.scripts[scriptName]
	if s == nil {
		return fmt.Errorf("script %q is not loaded", scriptName)
	}
	kept := s.runtime[:0]
	for _, rh := range s.runtime {
		if rh.spec.event != event {
			kept = append(kept, rh)
		}
	}
	s.runtime = kept
	h.disabled[scriptName+"\x00"+event] = true
	h.rebuildLocked()
	return nil
}

// SetActive switches handlers on or off without unloading: target is a
// script base name or a handler name; event "" means every event of the
// script named target.
func (h *Host) SetActive(event, target string, on bool) {
	target = strings.TrimSuffix(target, ".lua")
	h.mu.Lock()
	defer h.mu.Unlock()
	k := event + "\x00" + target
	if on {
		delete(h.inactive, k)
	} else {
		h.inactive[k] = true
	}
	h.rebuildLocked()
}

// NotifyDropped reports how many notifications were dropped because the
// queue was full.
func (h *Host) NotifyDropped() uint64 { return h.ndropped.Load() }

func knownEvent(e string) bool {
	switch e {
	case api.EvAuthenticate, api.EvAuthorize, api.EvStartRequest, api.EvMigrateRequest,
		api.EvOpRequest, api.EvRegisterVM, api.EvTimer:
		return true
	}
	for _, n := range api.NotifyEvents() {
		if n == e {
			return true
		}
	}
	return false
}

// standIn is a bcrypt hash of cost no password is known to match: what an
// unknown user's password is checked against.
func (h *Host) standIn(cost int) []byte {
	if v, ok := h.standIns.Load(cost); ok {
		return v.([]byte)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	b, err := bcrypt.GenerateFromPassword([]byte(hex.EncodeToString(secret)[:32]), cost)
	if err != nil {
		b, _ = bcrypt.GenerateFromPassword([]byte("stand-in"), bcrypt.DefaultCost)
	}
	v, _ := h.standIns.LoadOrStore(cost, b)
	return v.([]byte)
}
