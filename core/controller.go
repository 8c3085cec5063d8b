package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LNMLink is the controller's capability for one connected LNM: the LNM
// remote API of Table 2, batched per node. transport implements it over a
// yamux session; tests may use an in-process fake.
type LNMLink interface {
	Start(ctx context.Context, a LNMStartArgs) (LNMResults, error)
	OpOn(ctx context.Context, a LNMOpArgs) (LNMResults, error)
	Migrate(ctx context.Context, a LNMMigrateArgs) (LNMResults, error)
	// Prepare readies (or, with Args["abort"]="1", abandons) incoming
	// migrations of the given VMs.
	Prepare(ctx context.Context, a LNMStartArgs) (LNMResults, error)
	Receive(ctx context.Context, a ReceiveArgs) error
	Details(ctx context.Context, a NamesArgs) (DetailsReply, error)
}

// Config holds the controller's mechanism parameters (policy lives in hooks).
type Config struct {
	Domain        string        // the Usher domain VM names end with
	StartTimeout  time.Duration // how long an LNM may take to start a batch
	OpTimeout     time.Duration // how long an LNM may take for an op or migration batch
	DefaultMemMB  int           // memory of a VM when the request names none
	DefaultVCPUs  int           // vCPUs of a VM when the request names none
	MaxRequestVMs int           // largest VM list one request may carry
	EventBuffer   int           // pushed events queued per client before it is cut off
	OwnerOnly     bool          // baseline: non-admins see and touch only their own VMs
	Logger        *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Domain == "" {
		c.Domain = "usher.local"
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 5 * time.Minute
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 5 * time.Minute
	}
	if c.DefaultMemMB <= 0 {
		c.DefaultMemMB = 128
	}
	if c.DefaultVCPUs <= 0 {
		c.DefaultVCPUs = 1
	}
	if c.MaxRequestVMs <= 0 {
		c.MaxRequestVMs = 100000
	}
	if c.EventBuffer <= 0 {
		c.EventBuffer = 65536
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Controller is the mechanism of the Usher controller: the request pipeline,
// the global state and event fan-out. It does no I/O of its own: LNMs reach
// it through LNMLink, clients through transport.
type Controller struct {
	cfg   Config
	hooks Hooks
	st    *State
	log   *slog.Logger
	seq   atomic.Uint64
	gen   atomic.Uint64

	subMu  sync.RWMutex
	byUser map[string]map[*Subscription]struct{}
	watch  map[*Subscription]struct{}

	idem *idemCache
	wg   sync.WaitGroup

	// recovered is closed once every LNM known from before a restart is
	// back (or the grace period ended): new VMs are not named or placed
	// before then, so none can collide with a VM on an LNM still
	// reconnecting.
	recMu     sync.Mutex
	recovered chan struct{}

	// adopted is the detail of every adoption event, one map for all (a
	// restart adopts every VM of the site): events are read-only once
	// emitted.
	adopted StringMap
}

// New builds a controller. hooks must not be nil.
func New(cfg Config, hooks Hooks) *Controller {
	cfg = cfg.withDefaults()
	return &Controller{
		cfg: cfg, hooks: hooks, st: newState(cfg.Domain), log: cfg.Logger,
		byUser: map[string]map[*Subscription]struct{}{}, watch: map[*Subscription]struct{}{},
		idem:    newIdemCache(10000, 10*time.Minute),
		adopted: StringMap{"adopted": "true"},
	}
}

// State returns the read-only view of the global state.
func (c *Controller) State() *State { return c.st }

// Domain is the Usher domain.
func (c *Controller) Domain() string { return c.cfg.Domain }

// Wait blocks until background LNM batches have finished (for shutdown and
// tests).
func (c *Controller) Wait() { c.wg.Wait() }

// Authenticate runs the authentication chain.
func (c *Controller) Authenticate(ctx context.Context, cred Credentials) (Identity, error) {
	if cred.User == "" || cred.Password == "" {
		return Identity{}, fmt.Errorf("%w: user name and password required", ErrAuthFailed)
	}
	if err := ValidLabel(cred.User); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrAuthFailed, err)
	}
	id, err := c.hooks.Authenticate(ctx, cred)
	if err != nil {
		c.log.Info("authentication refused", "user", cred.User, "remote", cred.Remote, "err", err)
		if errors.Is(err, ErrAuthFailed) {
			return Identity{}, err
		}
		return Identity{}, fmt.Errorf("%w: %v", ErrAuthFailed, err)
	}
	if id.User == "" {
		id.User = cred.User
	}
	if id.User != cred.User {
		return Identity{}, fmt.Errorf("%w: authentication handler returned another user", ErrAuthFailed)
	}
	return id, nil
}

// ---------------------------------------------------------------------------
// Events

func (c *Controller) emit(evs ...Event) {
	for i := range evs {
		ev := evs[i]
		ev.Seq = c.seq.Add(1)
		if ev.Time.IsZero() {
			ev.Time = now()
		}
		c.hooks.Notify(ev)
		c.fanout(ev)
	}
}

// pluginsWant reports whether a plugin may handle the event: events only
// plugins would see need not be built when none does.
func (c *Controller) pluginsWant(event string) bool {
	if w, ok := c.hooks.(EventWanter); ok {
		return w.Wants(event)
	}
	return true
}

func (c *Controller) fanout(ev Event) {
	if ev.PluginsOnly {
		return
	}
	c.subMu.RLock()
	defer c.subMu.RUnlock()
	if ev.Type == EvRecovered {
		for _, m := range c.byUser {
			for s := range m {
				s.offer(ev)
			}
		}
		return
	}
	if ev.User != "" {
		for s := range c.byUser[ev.User] {
			s.offer(ev)
		}
	}
	for s := range c.watch {
		if ev.User == "" || ev.User != s.user {
			s.offer(ev)
		}
	}
}

// Subscription is a client's pushed-event feed: a queue that grows with
// what is waiting (a burst of a million adoptions after a restart must not
// cut every client off, and an idle feed must not hold a preallocated
// buffer) up to the controller's EventBuffer. Ready is signalled when
// events are queued or the feed ends; Take dequeues them. Once a feed ends
// (Unsubscribe, or the client fell too far behind: Overflowed, and it must
// reload its cache) nothing more is queued, and Take reports it closed
// when what was queued has been taken.
type Subscription struct {
	user    string
	cluster string
	over    atomic.Bool
	c       *Controller
	watch   bool
	ready   chan struct{} // capacity 1
	max     int

	mu     sync.Mutex
	q      []Event
	head   int
	closed bool
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *Subscription) offer(ev Event) {
	if s.cluster != "" && ev.VM != nil && ev.VM.Cluster != s.cluster && ev.User == s.user {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if len(s.q)-s.head >= s.max {
		// Cut off: what is queued is still delivered (a caller waiting
		// for one of those events sees it), then the client reloads.
		s.over.Store(true)
		s.closed = true
		s.signal()
		go s.c.Unsubscribe(s)
		return
	}
	s.q = append(s.q, ev)
	s.signal()
}

// Ready is signalled when events are waiting or the feed has ended.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take dequeues up to max events, oldest first. open is false once the
// feed has ended and nothing is left to take.
func (s *Subscription) Take(max int) (evs []Event, open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(max, len(s.q)-s.head)
	if n > 0 {
		evs = make([]Event, n)
		copy(evs, s.q[s.head:s.head+n])
		clear(s.q[s.head : s.head+n])
		s.head += n
	}
	switch {
	case s.head == len(s.q) && cap(s.q) > 8192:
		// A burst is over: give its memory back (a feed that keeps getting
		// a request's worth of events keeps its buffer).
		s.q, s.head = nil, 0
	case s.head == len(s.q):
		s.q, s.head = s.q[:0], 0
	default:
		s.signal() // more is waiting
	}
	return evs, !s.closed || len(s.q) > s.head
}

// Overflowed reports whether the feed was cut because the client lagged.
func (s *Subscription) Overflowed() bool { return s.over.Load() }

// Subscribe opens an event feed for a user: every change to their VMs
// (optionally one cluster only). watch adds everyone's events and is for
// admins only.
func (c *Controller) Subscribe(id Identity, cluster string, watch bool) (*Subscription, error) {
	if watch && !id.Admin {
		return nil, fmt.Errorf("%w: watching every event needs an admin", ErrForbidden)
	}
	s := &Subscription{ready: make(chan struct{}, 1), max: c.cfg.EventBuffer, user: id.User, cluster: cluster, c: c, watch: watch}
	c.subMu.Lock()
	m := c.byUser[id.User]
	if m == nil {
		m = map[*Subscription]struct{}{}
		c.byUser[id.User] = m
	}
	m[s] = struct{}{}
	if watch {
		c.watch[s] = struct{}{}
	}
	c.subMu.Unlock()
	return s, nil
}

// Subscribers counts the open event feeds.
func (c *Controller) Subscribers() int {
	c.subMu.RLock()
	defer c.subMu.RUnlock()
	n := 0
	for _, m := range c.byUser {
		n += len(m)
	}
	return n
}

// Unsubscribe ends a feed.
func (c *Controller) Unsubscribe(s *Subscription) {
	c.subMu.Lock()
	if m := c.byUser[s.user]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(c.byUser, s.user)
		}
	}
	delete(c.watch, s)
	c.subMu.Unlock()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.signal()
	}
	s.mu.Unlock()
}

// ReportError publishes an error event (from policies or links).
func (c *Controller) ReportError(ev Event) {
	ev.Type = EvError
	c.emit(ev)
}

// ---------------------------------------------------------------------------
// Queries

func (c *Controller) visible(id Identity, v *VM) bool {
	return !c.cfg.OwnerOnly || id.Admin || v.Owner == id.User
}

// List implements list(vm list, status).
func (c *Controller) List(ctx context.Context, id Identity, a ListArgs) (*ListReply, error) {
	if len(a.Names) > c.cfg.MaxRequestVMs {
		return nil, fmt.Errorf("%w: %d names in one list (limit %d)", ErrBadRequest, len(a.Names), c.cfg.MaxRequestVMs)
	}
	req := &Request{Kind: KindList, User: id, All: a.All, Cluster: a.Cluster}
	if err := c.hooks.Authorize(ctx, req); err != nil {
		return nil, err
	}
	all := req.All && (id.Admin || !c.cfg.OwnerOnly)
	if req.All && !all {
		return nil, fmt.Errorf("%w: listing everyone's VMs needs an admin", ErrForbidden)
	}
	keep := func(v *VM) bool {
		if !all && v.Owner != id.User {
			return false
		}
		return a.Cluster == "" || v.Cluster == a.Cluster
	}
	// Every change after this point has an event numbered above Seq: a
	// client that subscribed before listing applies only those on top.
	rep := &ListReply{Seq: c.seq.Load()}
	// source picks the index to read and whether its entries need keep.
	// The caller holds the read lock.
	source := func() (map[string]*VM, func(*VM) bool) {
		switch {
		case len(a.Names) > 0:
			m := make(map[string]*VM, len(a.Names))
			for _, n := range a.Names {
				if v := c.st.vms[n]; v != nil && keep(v) {
					m[n] = v
				}
			}
			return m, nil
		case all:
			return c.st.vms, keep
		case a.Cluster != "":
			if cl := c.st.clusters[clusterKey{id.User, a.Cluster}]; cl != nil {
				return cl.vms, nil
			}
			return nil, nil
		default:
			return c.st.owners[id.User], nil
		}
	}
	// lists adds the lost, missing and unmanaged lists. The caller holds
	// the read lock.
	lists := func() {
		if !id.Admin && c.cfg.OwnerOnly {
			rep.Lost = cloneVMs(c.st.lost, a.Status, keep)
			rep.Missing = cloneVMs(c.st.missing, a.Status, keep)
		} else {
			rep.Lost = cloneVMs(c.st.lost, a.Status, nil)
			rep.Missing = cloneVMs(c.st.missing, a.Status, nil)
			var um []*VM
			for _, l := range c.st.lnms {
				um = append(um, cloneVMs(l.unmanaged, a.Status, nil)...)
			}
			if len(um) > 0 {
				rep.Unmanaged = um
			}
		}
	}
	if a.Limit > 0 {
		return c.listPage(rep, a, keep, source, lists), nil
	}
	c.st.mu.RLock()
	src, filter := source()
	rep.VMs = cloneVMs(src, a.Status, filter)
	if a.Lists {
		lists()
	}
	c.st.mu.RUnlock()
	for _, l := range [][]*VM{rep.VMs, rep.Lost, rep.Missing, rep.Unmanaged} {
		sortVMs(l)
	}
	return rep, nil
}

// listPage answers a paged list: the names after a.After are gathered
// under the read lock, sorted and cut outside it, and only the page's VMs
// are copied (a quarter of a million VMs' names sort in tens of
// milliseconds, which writers should not wait for).
func (c *Controller) listPage(rep *ListReply, a ListArgs, keep func(*VM) bool, source func() (map[string]*VM, func(*VM) bool), lists func()) *ListReply {
	c.st.mu.RLock()
	src, filter := source()
	names := make([]string, 0, len(src))
	for n, v := range src {
		if n > a.After && (filter == nil || filter(v)) {
			names = append(names, n)
		}
	}
	c.st.mu.RUnlock()
	slices.Sort(names)
	if len(names) > a.Limit {
		names, rep.More = names[:a.Limit], true
	}
	page := make(map[string]*VM, len(names))
	c.st.mu.RLock()
	for _, n := range names {
		if v := c.st.vms[n]; v != nil && keep(v) { // gone since: its event follows Seq
			page[n] = v
		}
	}
	rep.VMs = cloneVMs(page, a.Status, nil)
	if a.Lists && a.After == "" {
		lists()
	}
	c.st.mu.RUnlock()
	slices.SortFunc(rep.VMs, func(x, y *VM) int { return strings.Compare(x.Name, y.Name) })
	for _, l := range [][]*VM{rep.Lost, rep.Missing, rep.Unmanaged} {
		sortVMs(l)
	}
	return rep
}

// ListLNMs implements list_lnms(lnm list, status).
func (c *Controller) ListLNMs(ctx context.Context, id Identity, a ListLNMsArgs) (*ListLNMsReply, error) {
	req := &Request{Kind: KindListLNMs, User: id, LNMs: a.Names}
	if err := c.hooks.Authorize(ctx, req); err != nil {
		return nil, err
	}
	all := c.st.LNMs()
	if len(a.Names) == 0 {
		if !a.Status {
			for _, l := range all {
				l.Status.Usage = Usage{}
			}
		}
		return &ListLNMsReply{LNMs: all}, nil
	}
	want := map[string]bool{}
	for _, n := range a.Names {
		want[n] = true
	}
	out := &ListLNMsReply{}
	for _, l := range all {
		if want[l.Info.Name] {
			if !a.Status {
				l.Status.Usage = Usage{}
			}
			out.LNMs = append(out.LNMs, l)
		}
	}
	return out, nil
}

// Clusters lists the caller's virtual clusters (admins: everyone's with all).
func (c *Controller) Clusters(id Identity, all bool) []Cluster {
	if all && (id.Admin || !c.cfg.OwnerOnly) {
		return c.st.Clusters("")
	}
	return c.st.Clusters(id.User)
}

// ---------------------------------------------------------------------------
// Request plumbing shared by start, op and migrate

func (c *Controller) checkList(n int) error {
	if n == 0 {
		return fmt.Errorf("%w: empty VM list", ErrBadRequest)
	}
	if n > c.cfg.MaxRequestVMs {
		return fmt.Errorf("%w: %d VMs in one request (limit %d)", ErrBadRequest, n, c.cfg.MaxRequestVMs)
	}
	return nil
}

// resolve turns VM names into request VMs, dropping unknown or invisible
// ones with a reason.
func (c *Controller) resolve(id Identity, names []string, req *Request) {
	seen := make(map[string]bool, len(names))
	c.st.mu.RLock()
	defer c.st.mu.RUnlock()
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		v := c.st.vms[n]
		if v == nil || !c.visible(id, v) {
			req.Dropped = append(req.Dropped, Drop{VM: n, Reason: "no such VM", By: "controller"})
			continue
		}
		req.VMs = append(req.VMs, &ReqVM{Name: v.Name, Short: v.Short, Owner: v.Owner, Cluster: v.Cluster,
			LNM: v.LNM, MemMB: v.MemMB, VCPUs: v.VCPUs, State: v.State, Data: cloneMap(v.Data)})
	}
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	o := make(map[string]string, len(m))
	for k, v := range m {
		o[k] = v
	}
	return o
}

// runChain runs authorize then the request event, recording the trace.
func (c *Controller) runChain(ctx context.Context, event string, req *Request) error {
	if err := c.hooks.Authorize(ctx, req); err != nil {
		return err
	}
	// Policies may not widen a request to VMs the caller cannot see.
	if req.Kind != KindStart {
		c.st.mu.RLock()
		for i := 0; i < len(req.VMs); i++ {
			v := c.st.vms[req.VMs[i].Name]
			if v == nil || !c.visible(req.User, v) {
				name := req.VMs[i].Name
				req.VMs = append(req.VMs[:i], req.VMs[i+1:]...)
				req.Dropped = append(req.Dropped, Drop{VM: name, Reason: "no such VM", By: "controller"})
				i--
			}
		}
		c.st.mu.RUnlock()
	}
	return c.hooks.Request(ctx, event, req)
}

// runBatches runs n LNM batches concurrently (one goroutine per batch, not
// per VM) and waits for them or for ctx. The batches outlive the request if
// its deadline passes: they finish and update the state on their own (the
// controller's WaitGroup tracks them). It reports whether all finished.
func (c *Controller) runBatches(ctx context.Context, n int, run func(i int)) bool {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		c.wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.wg.Done()
			run(i)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcome collects per-VM results from concurrent batches.
type outcome struct {
	mu   sync.Mutex
	done map[string]VMResult
}

func (o *outcome) set(r VMResult) {
	o.mu.Lock()
	o.done[r.Name] = r
	o.mu.Unlock()
}

func (o *outcome) result(id string, requested int, names []string, dropped []Drop, trace []TraceStep, pending string) *Result {
	o.mu.Lock()
	defer o.mu.Unlock()
	res := &Result{ID: id, Requested: requested, Dropped: dropped, Trace: trace}
	for _, n := range names {
		r, ok := o.done[n]
		if !ok {
			r = VMResult{Name: n, OK: false, Error: pending}
		}
		res.Done = append(res.Done, r)
	}
	return res
}

// ---------------------------------------------------------------------------
// start

// Start implements start(vm list, lnm list): it allocates names, runs the
// start_request chain, registers each VM, starts the batches on their LNMs
// concurrently and reports exactly what was done.
func (c *Controller) Start(ctx context.Context, id Identity, a StartArgs) (*Result, error) {
	if err := c.waitRecovered(ctx); err != nil {
		return nil, err
	}
	return c.once(ctx, id, "start", a.ID, func() (*Result, error) { return c.start(ctx, id, a, false) })
}

// once runs a request; concurrent or repeated calls with the same request
// id (per user and kind) share the first call's result.
func (c *Controller) once(ctx context.Context, id Identity, kind, reqID string, f func() (*Result, error)) (*Result, error) {
	if reqID == "" {
		return f()
	}
	fut, leader := c.idem.begin(id.User + "\x00" + kind + "\x00" + reqID)
	if !leader {
		return fut.wait(ctx)
	}
	res, err := f()
	fut.finish(res, err)
	return res, err
}

func (c *Controller) start(ctx context.Context, id Identity, a StartArgs, dry bool) (*Result, error) {
	if err := ValidLabel(a.Cluster); err != nil {
		return nil, fmt.Errorf("%w: cluster: %v", ErrBadRequest, err)
	}
	n := a.Count
	if len(a.Names) > 0 {
		n = len(a.Names)
	}
	if err := c.checkList(n); err != nil {
		return nil, err
	}
	if a.MemMB < 0 || a.VCPUs < 0 || a.MemMB > 1<<24 || a.VCPUs > 4096 {
		return nil, fmt.Errorf("%w: memory or vCPUs out of range", ErrBadRequest)
	}
	mem, cpus := a.MemMB, a.VCPUs
	if mem == 0 {
		mem = c.cfg.DefaultMemMB
	}
	if cpus == 0 {
		cpus = c.cfg.DefaultVCPUs
	}
	var replayed *Result
	if a.ID != "" && !dry && len(a.Names) == 0 {
		// A retry of a request whose VMs exist (also after a controller
		// restart: the id travels in the VM objects the LNMs cache) starts
		// only what the first attempt did not, and reports both.
		if res := c.replay(id, a); res != nil {
			if len(res.Done) >= n {
				return res, nil
			}
			replayed = res
			n -= len(res.Done)
			a.Count = n
		}
	}
	req := &Request{ID: a.ID, Kind: KindStart, User: id, Cluster: a.Cluster, LNMs: a.LNMs, Args: a.Args, DryRun: dry}
	c.st.mu.Lock()
	var shorts []string
	if len(a.Names) > 0 {
		seen := map[string]bool{}
		for _, s := range a.Names {
			if err := ValidLabel(s); err != nil {
				c.st.mu.Unlock()
				return nil, fmt.Errorf("%w: VM name: %v", ErrBadRequest, err)
			}
			full := FullName(s, id.User, c.cfg.Domain)
			if _, taken := c.st.vms[full]; taken || seen[s] {
				req.Dropped = append(req.Dropped, Drop{VM: full, Reason: "already exists", By: "controller"})
				continue
			}
			seen[s] = true
			shorts = append(shorts, s)
		}
	} else {
		shorts = c.st.allocLocked(id.User, a.Cluster, n)
	}
	c.st.mu.Unlock()
	for _, s := range shorts {
		req.VMs = append(req.VMs, &ReqVM{Name: FullName(s, id.User, c.cfg.Domain), Short: s, Owner: id.User,
			Cluster: a.Cluster, MemMB: mem, VCPUs: cpus})
	}
	abandon := func() {
		c.st.mu.Lock()
		c.st.dropEmptyClusterLocked(id.User, a.Cluster)
		c.st.mu.Unlock()
	}
	if err := c.runChain(ctx, EvStartRequest, req); err != nil {
		abandon()
		return nil, err
	}
	res := &outcome{done: map[string]VMResult{}}
	var names []string
	groups := map[string][]*VM{}
	var order []string
	// Validate what the chain decided and register each VM.
	for _, rv := range req.VMs {
		// Policies may attach data and choose nodes, never rename or re-own.
		short, owner, ok := ParseFullName(rv.Name, c.cfg.Domain)
		if !ok || owner != id.User || rv.Owner != id.User {
			res.set(VMResult{Name: rv.Name, Error: "policy changed the VM's name or owner"})
			names = append(names, rv.Name)
			continue
		}
		names = append(names, rv.Name)
		if rv.LNM == "" {
			res.set(VMResult{Name: rv.Name, Error: "no placement policy chose an LNM"})
			continue
		}
		if !c.st.connected(rv.LNM) {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("LNM %q is not connected", rv.LNM)})
			continue
		}
		if rv.MemMB <= 0 {
			rv.MemMB = mem
		}
		if rv.VCPUs <= 0 {
			rv.VCPUs = cpus
		}
		if dry {
			res.set(VMResult{Name: rv.Name, OK: true, LNM: rv.LNM, State: StatePending})
			continue
		}
		if err := c.hooks.RegisterVM(ctx, req, rv); err != nil {
			res.set(VMResult{Name: rv.Name, Error: "register_vm: " + err.Error()})
			continue
		}
		vm := &VM{Name: rv.Name, Short: short, Owner: id.User, Cluster: a.Cluster, LNM: rv.LNM, State: StateStarting,
			MemMB: rv.MemMB, VCPUs: rv.VCPUs, Data: cloneMap(rv.Data), Version: 1, Created: now(), Request: a.ID}
		c.st.mu.Lock()
		ok = c.st.insertLocked(vm)
		var clone *VM
		if ok {
			clone = vm.Snapshot()
		}
		c.st.mu.Unlock()
		if !ok {
			res.set(VMResult{Name: rv.Name, Error: "already exists"})
			continue
		}
		if _, seen := groups[rv.LNM]; !seen {
			order = append(order, rv.LNM)
		}
		groups[rv.LNM] = append(groups[rv.LNM], clone)
	}
	if dry || len(groups) == 0 {
		abandon()
		return merge(replayed, res.result(a.ID, n, names, req.Dropped, req.Trace, "")), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) { c.startBatch(order[i], groups[order[i]], a.Args, a.ID, res) }) {
		pending = "still starting when the request's deadline passed; watch its state"
	}
	return merge(replayed, res.result(a.ID, n, names, req.Dropped, req.Trace, pending)), nil
}

// merge prepends what an earlier attempt of the same request did.
func merge(earlier, now *Result) *Result {
	if earlier == nil {
		return now
	}
	now.Requested += len(earlier.Done)
	now.Done = append(earlier.Done, now.Done...)
	now.Trace = append(earlier.Trace, now.Trace...)
	return now
}

// replay answers a retried start request from the VMs it created.
func (c *Controller) replay(id Identity, a StartArgs) *Result {
	c.st.mu.RLock()
	defer c.st.mu.RUnlock()
	vms := c.st.requests[id.User+"\x00"+a.ID]
	if len(vms) == 0 {
		return nil
	}
	n := a.Count
	if len(a.Names) > 0 {
		n = len(a.Names)
	}
	res := &Result{ID: a.ID, Requested: n}
	snap := cloneVMs(map[string]*VM(indexByName(vms)), false, nil)
	sortVMs(snap)
	for _, v := range snap {
		ok := v.State != StateFailed && v.State != StateLost && v.State != StateMissing
		r := VMResult{Name: v.Name, OK: ok, State: v.State, LNM: v.LNM, VM: v}
		if !ok {
			r.Error = "VM is " + string(v.State)
		}
		res.Done = append(res.Done, r)
	}
	res.Trace = []TraceStep{{Event: EvStartRequest, Handler: "controller", Action: "replayed",
		Detail: fmt.Sprintf("request id seen before: %d VMs exist", len(res.Done))}}
	return res
}

func indexByName(vms []*VM) map[string]*VM {
	m := make(map[string]*VM, len(vms))
	for _, v := range vms {
		m[v.Name] = v
	}
	return m
}

func (c *Controller) link(lnm string) (LNMLink, uint64) {
	c.st.mu.RLock()
	defer c.st.mu.RUnlock()
	l := c.st.lnms[lnm]
	if l == nil || l.link == nil {
		return nil, 0
	}
	return l.link, l.gen
}

func (c *Controller) startBatch(lnm string, vms []*VM, args map[string]string, reqID string, res *outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StartTimeout)
	defer cancel()
	link, _ := c.link(lnm)
	var out LNMResults
	var err error
	if link == nil {
		err = fmt.Errorf("LNM %q disconnected", lnm)
	} else {
		out, err = link.Start(ctx, LNMStartArgs{VMs: vms, Args: args})
	}
	byName := make(map[string]VMResult, len(out.Results))
	for _, r := range out.Results {
		byName[r.Name] = r
	}
	var evs []Event
	var acks []*VM
	stateEvents := c.pluginsWant(EvStateChanged)
	c.st.mu.Lock()
	for _, want := range vms {
		r, got := byName[want.Name]
		vm := c.st.vms[want.Name]
		if vm == nil {
			res.set(VMResult{Name: want.Name, Error: "removed while starting"})
			continue
		}
		switch {
		case err != nil && !got:
			// The LNM's fate is unknown: the VM may or may not run there.
			msg := fmt.Sprintf("start on LNM %s failed: %v", lnm, err)
			c.st.setStateLocked(vm, StateLost, msg)
			res.set(VMResult{Name: vm.Name, Error: msg + " (VM marked lost)", State: StateLost, LNM: lnm})
			evs = append(evs, Event{Type: EvStartComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: msg},
				Event{Type: EvVMLost, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm})
		case r.OK:
			st := r.State
			if st == "" {
				st = StateRunning
			}
			if vm.State == StateStarting || vm.State == StatePending {
				c.st.setStateLocked(vm, st, ReasonStarted)
			}
			predicted := r.Cached != 0 && r.Cached == vm.Version && vm.State == st && vm.Reason == ReasonStarted
			if !predicted && r.Cached >= vm.Version {
				// The LNM's cached object differs from ours under a version
				// at least as new: ours must supersede it.
				vm.Version = r.Cached + 1
			}
			cl := vm.Snapshot()
			if !predicted {
				acks = append(acks, cl)
			}
			res.set(VMResult{Name: vm.Name, OK: true, State: vm.State, LNM: lnm, VM: cl})
			evs = append(evs, Event{Type: EvStartComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, OK: true})
			if stateEvents {
				evs = append(evs, Event{Type: EvStateChanged, VM: cl, User: vm.Owner, LNM: lnm, PluginsOnly: true})
			}
		default:
			msg := r.Error
			if msg == "" {
				msg = "LNM returned no result"
			}
			c.st.setStateLocked(vm, StateFailed, msg)
			cl := vm.Snapshot()
			c.st.removeLocked(vm)
			res.set(VMResult{Name: vm.Name, Error: msg, State: StateFailed, LNM: lnm})
			evs = append(evs, Event{Type: EvStartComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, Error: msg})
		}
	}
	c.st.mu.Unlock()
	c.ackStates(lnm, acks)
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// op_on

// OpOn implements op_on(operation, vm list).
func (c *Controller) OpOn(ctx context.Context, id Identity, a OpArgs) (*Result, error) {
	return c.once(ctx, id, "op", a.ID, func() (*Result, error) { return c.opOn(ctx, id, a, false) })
}

func (c *Controller) opOn(ctx context.Context, id Identity, a OpArgs, dry bool) (*Result, error) {
	op, err := ParseOp(string(a.Op))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if err := c.checkList(len(a.VMs)); err != nil {
		return nil, err
	}
	req := &Request{ID: a.ID, Kind: KindOp, User: id, Op: op, Args: a.Args, DryRun: dry}
	c.resolve(id, a.VMs, req)
	if err := c.runChain(ctx, EvOpRequest, req); err != nil {
		return nil, err
	}
	res := &outcome{done: map[string]VMResult{}}
	groups := map[string][]string{}
	var order, names []string
	for _, rv := range req.VMs {
		names = append(names, rv.Name)
		vm, ok := c.st.VM(rv.Name)
		if !ok {
			res.set(VMResult{Name: rv.Name, Error: "no such VM"})
			continue
		}
		if !c.st.connected(vm.LNM) {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("LNM %q is not connected (VM is %s)", vm.LNM, vm.State)})
			continue
		}
		if dry {
			res.set(VMResult{Name: rv.Name, OK: true, LNM: vm.LNM, State: vm.State})
			continue
		}
		if _, seen := groups[vm.LNM]; !seen {
			order = append(order, vm.LNM)
		}
		groups[vm.LNM] = append(groups[vm.LNM], vm.Name)
	}
	if dry || len(groups) == 0 {
		return res.result(a.ID, len(a.VMs), names, req.Dropped, req.Trace, ""), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) { c.opBatch(order[i], op, groups[order[i]], a.Args, a.ID, res) }) {
		pending = "still in progress when the request's deadline passed; watch its state"
	}
	return res.result(a.ID, len(a.VMs), names, req.Dropped, req.Trace, pending), nil
}

func (c *Controller) opBatch(lnm string, op Op, names []string, args map[string]string, reqID string, res *outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
	defer cancel()
	link, _ := c.link(lnm)
	var out LNMResults
	var err error
	if link == nil {
		err = fmt.Errorf("LNM %q disconnected", lnm)
	} else {
		out, err = link.OpOn(ctx, LNMOpArgs{Op: op, Names: names, Args: args})
	}
	byName := make(map[string]VMResult, len(out.Results))
	for _, r := range out.Results {
		byName[r.Name] = r
	}
	var evs []Event
	var acks []*VM
	var forget []string
	c.st.mu.Lock()
	for _, n := range names {
		r, got := byName[n]
		vm := c.st.vms[n]
		if vm == nil {
			res.set(VMResult{Name: n, Error: "VM vanished during the operation"})
			continue
		}
		detail := map[string]string{"op": string(op)}
		switch {
		case !got:
			msg := "LNM returned no result"
			if err != nil {
				msg = fmt.Sprintf("%s on LNM %s failed: %v", op, lnm, err)
			}
			res.set(VMResult{Name: n, Error: msg, State: vm.State, LNM: lnm})
			evs = append(evs, Event{Type: EvOpComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: msg, Detail: detail})
		case !r.OK:
			res.set(VMResult{Name: n, Error: r.Error, State: vm.State, LNM: lnm})
			evs = append(evs, Event{Type: EvOpComplete, VM: vm.Snapshot(), User: vm.Owner, LNM: lnm, Req: reqID, Error: r.Error, Detail: detail})
		case op == OpDestroy:
			c.st.setStateLocked(vm, StateDestroyed, "destroyed")
			cl := vm.Snapshot()
			c.st.removeLocked(vm)
			forget = append(forget, n)
			res.set(VMResult{Name: n, OK: true, State: StateDestroyed, LNM: lnm, VM: cl})
			evs = append(evs, Event{Type: EvOpComplete, VM: cl, User: cl.Owner, LNM: lnm, Req: reqID, OK: true, Detail: detail},
				Event{Type: EvStateChanged, VM: cl, User: cl.Owner, LNM: lnm})
		default:
			changed := c.st.setStateLocked(vm, r.State, string(op))
			cl := vm.Snapshot()
			acks = append(acks, cl)
			res.set(VMResult{Name: n, OK: true, State: vm.State, LNM: lnm, VM: cl})
			evs = append(evs, Event{Type: EvOpComplete, VM: cl, User: vm.Owner, LNM: lnm, Req: reqID, OK: true, Detail: detail})
			if changed || op == OpReboot || op == OpCycle {
				evs = append(evs, Event{Type: EvStateChanged, VM: cl, User: vm.Owner, LNM: lnm, Detail: detail})
			}
		}
	}
	c.st.mu.Unlock()
	c.ackStates(lnm, acks)
	c.ack(lnm, nil, forget)
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// migrate

// Migrate implements migrate(vm list, lnm list).
func (c *Controller) Migrate(ctx context.Context, id Identity, a MigrateArgs) (*Result, error) {
	return c.once(ctx, id, "migrate", a.ID, func() (*Result, error) { return c.migrate(ctx, id, a, false) })
}

type mkey struct{ src, dst string }

func (c *Controller) migrate(ctx context.Context, id Identity, a MigrateArgs, dry bool) (*Result, error) {
	if err := c.checkList(len(a.VMs)); err != nil {
		return nil, err
	}
	req := &Request{ID: a.ID, Kind: KindMigrate, User: id, LNMs: a.LNMs, Args: a.Args, DryRun: dry}
	c.resolve(id, a.VMs, req)
	if err := c.runChain(ctx, EvMigrateRequest, req); err != nil {
		return nil, err
	}
	res := &outcome{done: map[string]VMResult{}}
	groups := map[mkey][]*VM{}
	var order []mkey
	var names []string
	for _, rv := range req.VMs {
		names = append(names, rv.Name)
		vm, ok := c.st.VM(rv.Name)
		if !ok {
			res.set(VMResult{Name: rv.Name, Error: "no such VM"})
			continue
		}
		if rv.Target == "" {
			res.set(VMResult{Name: rv.Name, Error: "no migration target chosen by policy"})
			continue
		}
		if rv.Target == vm.LNM {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("already on %s", vm.LNM)})
			continue
		}
		if vm.State != StateRunning && vm.State != StatePaused {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("cannot migrate a VM that is %s", vm.State)})
			continue
		}
		src, ok1 := c.st.LNM(vm.LNM)
		dst, ok2 := c.st.LNM(rv.Target)
		if !ok1 || src.State != LNMConnected {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("source LNM %q is not connected", vm.LNM)})
			continue
		}
		if !ok2 || dst.State != LNMConnected {
			res.set(VMResult{Name: rv.Name, Error: fmt.Sprintf("target LNM %q is not connected", rv.Target)})
			continue
		}
		if dry {
			res.set(VMResult{Name: rv.Name, OK: true, LNM: rv.Target, State: vm.State})
			continue
		}
		k := mkey{vm.LNM, rv.Target}
		if _, seen := groups[k]; !seen {
			order = append(order, k)
		}
		groups[k] = append(groups[k], vm)
	}
	if dry || len(groups) == 0 {
		return res.result(a.ID, len(a.VMs), names, req.Dropped, req.Trace, ""), nil
	}
	pending := ""
	if !c.runBatches(ctx, len(order), func(i int) {
		k := order[i]
		c.migrateBatch(k.src, k.dst, groups[k], a.Args, a.ID, res)
	}) {
		pending = "still migrating when the request's deadline passed; watch its state"
	}
	return res.result(a.ID, len(a.VMs), names, req.Dropped, req.Trace, pending), nil
}

func (c *Controller) migrateBatch(src, dst string, vms []*VM, args map[string]string, reqID string, res *outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
	defer cancel()
	slink, _ := c.link(src)
	dlink, _ := c.link(dst)
	dl, _ := c.st.LNM(dst)
	fail := func(vmName, msg string) {
		res.set(VMResult{Name: vmName, Error: msg, LNM: src})
	}
	if slink == nil || dlink == nil || dl == nil {
		for _, v := range vms {
			fail(v.Name, "source or target LNM disconnected")
		}
		return
	}
	prev := map[string]VMState{}
	var evs []Event
	c.st.mu.Lock()
	for _, v := range vms {
		if vm := c.st.vms[v.Name]; vm != nil {
			prev[v.Name] = vm.State
			c.st.setStateLocked(vm, StateMigrating, "to "+dst)
			evs = append(evs, Event{Type: EvStateChanged, VM: vm.Snapshot(), User: vm.Owner, LNM: src})
		}
	}
	c.st.mu.Unlock()
	c.emit(evs...)
	evs = nil
	// 1. The destination prepares (a no-op for peer-to-peer hypervisors).
	prep, err := dlink.Prepare(ctx, LNMStartArgs{VMs: vms, Args: args})
	ready := map[string]bool{}
	for _, r := range prep.Results {
		if r.OK {
			ready[r.Name] = true
		}
	}
	var names []string
	for _, v := range vms {
		if ready[v.Name] {
			names = append(names, v.Name)
		}
	}
	// 2. The source migrates.
	var out LNMResults
	var merr error
	if len(names) > 0 {
		out, merr = slink.Migrate(ctx, LNMMigrateArgs{Names: names, Target: dst, Address: dl.Info.Address, Args: args})
	}
	okm := map[string]VMResult{}
	for _, r := range out.Results {
		okm[r.Name] = r
	}
	var abort []*VM
	var dstAcks []*VM
	var srcForget []string
	var srcAcks []*VM
	c.st.mu.Lock()
	for _, v := range vms {
		vm := c.st.vms[v.Name]
		if vm == nil {
			fail(v.Name, "VM vanished during migration")
			continue
		}
		r, got := okm[v.Name]
		switch {
		case !ready[v.Name]:
			msg := "target could not prepare the migration"
			if err != nil {
				msg += ": " + err.Error()
			}
			for _, pr := range prep.Results {
				if pr.Name == v.Name && pr.Error != "" {
					msg = "target refused: " + pr.Error
				}
			}
			c.st.setStateLocked(vm, prev[v.Name], "migration failed")
			srcAcks = append(srcAcks, vm.Snapshot())
			fail(v.Name, msg)
		case got && r.OK:
			c.st.moveLocked(vm, dst)
			st := r.State
			if st == "" {
				st = prev[v.Name]
			}
			c.st.setStateLocked(vm, st, "migrated from "+src)
			cl := vm.Snapshot()
			dstAcks = append(dstAcks, cl)
			srcForget = append(srcForget, v.Name)
			res.set(VMResult{Name: v.Name, OK: true, State: vm.State, LNM: dst, VM: cl})
			evs = append(evs, Event{Type: EvMigrateDone, VM: cl, User: vm.Owner, LNM: dst, Req: reqID, OK: true, Detail: map[string]string{"from": src, "to": dst}},
				Event{Type: EvStateChanged, VM: cl, User: vm.Owner, LNM: dst, Detail: map[string]string{"from": src, "to": dst}})
		default:
			msg := r.Error
			if msg == "" && merr != nil {
				msg = merr.Error()
			}
			if msg == "" {
				msg = "source returned no result"
			}
			c.st.setStateLocked(vm, prev[v.Name], "migration failed")
			srcAcks = append(srcAcks, vm.Snapshot())
			abort = append(abort, v)
			fail(v.Name, "migration failed, VM stays on "+src+": "+msg)
			evs = append(evs, Event{Type: EvMigrateDone, VM: vm.Snapshot(), User: vm.Owner, LNM: src, Req: reqID, Error: msg})
		}
	}
	c.st.mu.Unlock()
	if len(abort) > 0 {
		actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := dlink.Prepare(actx, LNMStartArgs{VMs: abort, Args: map[string]string{"abort": "1"}}); err != nil {
			c.log.Warn("aborting incoming migration failed", "lnm", dst, "err", err)
		}
		acancel()
	}
	c.ack(dst, dstAcks, nil)
	c.ack(src, srcAcks, srcForget)
	c.emit(evs...)
}

// ---------------------------------------------------------------------------
// plan

// Plan dry-runs a request through the live chain and returns the decision
// trace; nothing changes.
func (c *Controller) Plan(ctx context.Context, id Identity, a PlanArgs) (*Result, error) {
	switch {
	case a.Start != nil:
		return c.start(ctx, id, *a.Start, true)
	case a.Op != nil:
		return c.opOn(ctx, id, *a.Op, true)
	case a.Migrate != nil:
		return c.migrate(ctx, id, *a.Migrate, true)
	}
	return nil, fmt.Errorf("%w: plan needs a start, op or migrate request", ErrBadRequest)
}

// waitRecovered holds new work until the state is whole after a restart.
func (c *Controller) waitRecovered(ctx context.Context) error {
	c.recMu.Lock()
	ch := c.recovered
	c.recMu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: the controller is rebuilding its state after a restart; retry", ErrUnavailable)
	}
}

// Recovered is closed once a restarted controller's state is whole again
// (every known LNM back, or the grace period over); at once when there
// is nothing to recover.
func (c *Controller) Recovered() <-chan struct{} {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	if c.recovered == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return c.recovered
}

func (c *Controller) openGateIfWhole() {
	c.st.mu.RLock()
	waiting := c.st.lnmsIn[LNMRecovering]
	c.st.mu.RUnlock()
	if waiting > 0 {
		return
	}
	c.recMu.Lock()
	opened := false
	if c.recovered != nil {
		select {
		case <-c.recovered:
		default:
			close(c.recovered)
			opened = true
		}
	}
	c.recMu.Unlock()
	if opened {
		c.st.mu.Lock()
		c.st.dropHintsLocked()
		c.st.mu.Unlock()
		n := c.st.Counts()
		c.log.Info("state whole again after the restart", "lnms", n.Connected, "vms", n.VMs, "lost", n.Lost)
		c.emit(Event{Type: EvRecovered, Detail: StringMap{"lnms": strconv.Itoa(n.Connected), "vms": strconv.Itoa(n.VMs)}})
	}
}
