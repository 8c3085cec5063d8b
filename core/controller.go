package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
)

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
	// Observe, when set, is told of every client call the controller
	// serves: its method, how long it took and how it ended (metrics).
	Observe func(method string, took time.Duration, err error)
	// GuestKeys returns a user's registered SSH public keys (one
	// authorized_keys line per line): a VM they start gets them as its data
	// ssh_keys before start_request, where a policy may change them.
	GuestKeys func(user string) string
	// Adopt says when a managed VM the controller has no record of, found
	// on a node, is adopted (see AdoptMode); AdoptWindow is how long after
	// the controller starts any registering node is believed (recovery).
	Adopt       AdoptMode
	AdoptWindow time.Duration
	// SaveModes keeps the nodes' modes (every one not active) across
	// restarts; called after each change, serialised. Nil: not kept.
	SaveModes func(map[string]ModeRecord) error
	// Fence powers a lost node off (the site's fencing command) and
	// returns nil only once that is confirmed; FenceTimeout bounds it
	// (default one minute). Nil: fencing, hence failover, is off.
	Fence func(ctx context.Context, node api.NodeInfo) error
	// SaveReservations keeps the reservations across restarts; called
	// after each change, serialised. Nil: not kept.
	SaveReservations func([]api.Reservation) error
	FenceTimeout     time.Duration
	Logger           *slog.Logger
}

// AdoptMode says which nodes the controller believes about VMs it has no
// record of. A node is always believed about the VMs the controller placed
// on it; a VM it reports that another connected node holds is a conflict,
// whatever the mode.
type AdoptMode string

// Adoption modes.
const (
	// AdoptRecovery (the default) adopts unknown managed VMs only in
	// recovery: from a node known from before a controller restart, at its
	// first registration since, and from any node that registers within
	// AdoptWindow of the controller's start (its state may have been
	// lost): the paper's crash recovery, where the nodes' reports rebuild
	// the state. Elsewhere they go on the unmanaged list.
	AdoptRecovery AdoptMode = "recovery"
	// AdoptNever puts every unknown VM on the unmanaged list.
	AdoptNever AdoptMode = "never"
	// AdoptAlways adopts an unknown managed VM from any node at any time.
	AdoptAlways AdoptMode = "always"
)

// ParseAdoptMode validates an adoption mode ("" is the default).
func ParseAdoptMode(s string) (AdoptMode, error) {
	switch AdoptMode(s) {
	case "":
		return AdoptRecovery, nil
	case AdoptRecovery, AdoptNever, AdoptAlways:
		return AdoptMode(s), nil
	}
	return "", fmt.Errorf("adoption mode %q: want recovery, never or always", s)
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
	if c.MaxRequestVMs <= 0 || c.MaxRequestVMs > api.MaxRequestVMs {
		c.MaxRequestVMs = 100000
	}
	if c.EventBuffer <= 0 {
		c.EventBuffer = 65536
	}
	if c.Adopt == "" {
		c.Adopt = AdoptRecovery
	}
	if c.FenceTimeout <= 0 {
		c.FenceTimeout = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Controller is the mechanism of the Usher controller: the request pipeline,
// the global state and event fan-out. It does no I/O of its own: LNMs reach
// it through their links (api.Node), clients through package controller.
// It owns the goroutines it starts (LNM batches, acknowledgement senders);
// Close waits for them.
type Controller struct {
	cfg   Config
	hooks Hooks
	st    *State
	log   *slog.Logger
	seq   atomic.Uint64
	gen   atomic.Uint64

	subMu    sync.RWMutex
	byUser   map[string]map[*Subscription]struct{}
	watch    map[*Subscription]struct{}
	feedCuts atomic.Uint64

	idem   *idemCache
	wg     sync.WaitGroup // batches, acknowledgements, background syncs
	closed atomic.Bool
	stop   chan struct{} // closed by Close: background work gives up

	// recovered is closed once every LNM known from before a restart is
	// back (or the grace period ended): new VMs are not named or placed
	// before then, so none can collide with a VM on an LNM still
	// reconnecting.
	recMu     sync.Mutex
	recovered chan struct{}

	// adopted is the detail of every adoption event, one map for all (a
	// restart adopts every VM of the site): events are read-only once
	// emitted.
	adopted api.StringMap
	// adoptUntil ends the startup window of AdoptRecovery.
	adoptUntil time.Time
	// modeMu serialises the saving of node modes, resMu of reservations.
	modeMu, resMu sync.Mutex
	// The reservation clock (runClock), started by the first reservation.
	clockOnce sync.Once
	clockWake chan struct{}
}

// New builds a controller. hooks must not be nil.
func New(cfg Config, hooks Hooks) *Controller {
	cfg = cfg.withDefaults()
	return &Controller{
		cfg: cfg, hooks: hooks, st: newState(cfg.Domain), log: cfg.Logger,
		byUser: map[string]map[*Subscription]struct{}{}, watch: map[*Subscription]struct{}{},
		idem:       newIdemCache(10000, 10*time.Minute),
		adopted:    api.StringMap{"adopted": "true"},
		stop:       make(chan struct{}),
		adoptUntil: time.Now().Add(cfg.AdoptWindow),
	}
}

// State returns the read-only view of the global state.
func (c *Controller) State() *State { return c.st }

// Domain is the Usher domain.
func (c *Controller) Domain() string { return c.cfg.Domain }

// Close refuses new requests, ends every event feed and waits for the
// controller's background work (LNM batches finish or time out;
// acknowledgements in flight are sent or fail). Nothing the controller
// started runs after it returns.
func (c *Controller) Close() {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	close(c.stop)
	c.subMu.Lock()
	var subs []*Subscription
	for _, m := range c.byUser {
		for s := range m {
			subs = append(subs, s)
		}
	}
	c.subMu.Unlock()
	for _, s := range subs {
		c.Unsubscribe(s)
	}
	c.wg.Wait()
}

// errClosed answers requests after Close.
var errClosed = api.Errorf(api.ErrUnavailable, "the controller is shutting down")

// begin admits a request: it fails after Close, and recovers a panic of
// the request's own code into an internal error for that call only (logged
// with its stack), so one bad request never takes the controller down.
// Locks are taken with defer everywhere: a panic leaves none held.
func (c *Controller) begin() error {
	if c.closed.Load() {
		return errClosed
	}
	return nil
}

// validator is an argument that checks itself against api's bounds.
type validator interface{ Validate() error }

// serve is the front of every public call: the controller must be open,
// the arguments valid and naming at most MaxRequestVMs VMs (vms), and a
// panic anywhere in f fails this call only (recoverTo).
func serve[A validator, R any](c *Controller, what string, a A, vms int, f func() (R, error)) (r R, err error) {
	if obs := c.cfg.Observe; obs != nil {
		t0 := time.Now()
		defer func() { obs(what, time.Since(t0), err) }()
	}
	if err := c.begin(); err != nil {
		return r, err
	}
	defer c.recoverTo(&err, what)
	if err := a.Validate(); err != nil {
		return r, err
	}
	if vms > c.cfg.MaxRequestVMs {
		return r, api.Errorf(api.ErrBadRequest, "%d VMs in one request (limit %d)", vms, c.cfg.MaxRequestVMs)
	}
	return f()
}

// recoverTo turns a panic into *err; use as defer c.recoverTo(&err, "what").
func (c *Controller) recoverTo(err *error, what string) {
	if r := recover(); r != nil {
		c.log.Error("panic in the controller; the call fails, the controller goes on", "in", what, "panic", r, "stack", string(debug.Stack()))
		*err = api.Errorf(api.ErrInternal, "internal error in %s (logged)", what)
	}
}

// logPanic logs a panic of background work (use with defer) and lets the
// controller go on.
func (c *Controller) logPanic(what string) {
	if r := recover(); r != nil {
		c.log.Error("panic in the controller; the work is abandoned, the controller goes on", "in", what, "panic", r, "stack", string(debug.Stack()))
	}
}

// goTracked runs f in a goroutine the controller owns (Close waits for
// it); a panic in f is logged, not fatal.
func (c *Controller) goTracked(what string, f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.logPanic(what)
		f()
	}()
}

// Authenticate runs the authentication chain.
func (c *Controller) Authenticate(ctx context.Context, cred Credentials) (id api.Identity, err error) {
	if err := c.begin(); err != nil {
		return api.Identity{}, err
	}
	defer c.recoverTo(&err, "authenticate")
	if cred.User == "" || cred.Password == "" {
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "user name and password required")
	}
	if err := api.ValidLabel(cred.User); err != nil {
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "user name: %v", err)
	}
	id, err = c.hooks.Authenticate(ctx, cred)
	if err != nil {
		c.log.Info("authentication refused", "user", cred.User, "remote", cred.Remote, "err", err)
		if errors.Is(err, api.ErrUnauthorized) {
			return api.Identity{}, err
		}
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "%v", err)
	}
	if id.User == "" {
		id.User = cred.User
	}
	if id.User != cred.User {
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "authentication handler returned another user")
	}
	return id, nil
}

// ---------------------------------------------------------------------------
// Events

func (c *Controller) emit(evs ...api.Event) {
	for i := range evs {
		ev := evs[i]
		ev.Seq = c.seq.Add(1)
		if ev.Time.IsZero() {
			ev.Time = now()
		}
		c.notify(ev)
		c.fanout(ev)
	}
	if c.st.modePending.Load() {
		c.flushModes()
	}
}

// notify hands ev to the policies; a panicking hook is logged and the
// event still reaches the clients.
func (c *Controller) notify(ev api.Event) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("panic delivering an event to policies", "event", ev.Type, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	c.hooks.Notify(ev)
}

// pluginsWant reports whether a plugin may handle the event: events only
// plugins would see need not be built when none does.
func (c *Controller) pluginsWant(event string) bool {
	if w, ok := c.hooks.(EventWanter); ok {
		return w.Wants(event)
	}
	return true
}

func (c *Controller) fanout(ev api.Event) {
	if ev.PluginsOnly {
		return
	}
	c.subMu.RLock()
	defer c.subMu.RUnlock()
	if ev.Type == api.EvRecovered {
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
// when what was queued has been taken. Its owner calls Unsubscribe.
type Subscription struct {
	user    string
	cluster string
	over    atomic.Bool
	watch   bool
	ready   chan struct{} // capacity 1
	max     int
	cuts    *atomic.Uint64 // the controller's count of feeds cut off

	mu     sync.Mutex
	q      []api.Event
	head   int
	closed bool
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *Subscription) offer(ev api.Event) {
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
		if s.cuts != nil {
			s.cuts.Add(1)
		}
		s.closed = true
		s.signal()
		return
	}
	s.q = append(s.q, ev)
	s.signal()
}

// Ready is signalled when events are waiting or the feed has ended.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take dequeues up to max events, oldest first. open is false once the
// feed has ended and nothing is left to take.
func (s *Subscription) Take(max int) (evs []api.Event, open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(max, len(s.q)-s.head)
	if n > 0 {
		evs = make([]api.Event, n)
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
func (c *Controller) Subscribe(id api.Identity, cluster string, watch bool) (*Subscription, error) {
	if err := c.begin(); err != nil {
		return nil, err
	}
	if watch && !id.Admin {
		return nil, api.Errorf(api.ErrForbidden, "watching every event needs an admin")
	}
	if cluster != "" {
		if err := api.ValidLabel(cluster); err != nil {
			return nil, api.Errorf(api.ErrBadRequest, "cluster: %v", err)
		}
	}
	s := &Subscription{ready: make(chan struct{}, 1), max: c.cfg.EventBuffer, user: id.User, cluster: cluster, watch: watch, cuts: &c.feedCuts}
	c.subMu.Lock()
	defer c.subMu.Unlock()
	m := c.byUser[id.User]
	if m == nil {
		m = map[*Subscription]struct{}{}
		c.byUser[id.User] = m
	}
	m[s] = struct{}{}
	if watch {
		c.watch[s] = struct{}{}
	}
	return s, nil
}

// FeedCuts counts event feeds cut off because their client fell too far
// behind (each then reloads its cache).
func (c *Controller) FeedCuts() uint64 { return c.feedCuts.Load() }

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
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.signal()
	}
}

// ReportError publishes an error event (from policies or links).
func (c *Controller) ReportError(ev api.Event) {
	ev.Type = api.EvError
	c.emit(ev)
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
		return api.Errorf(api.ErrUnavailable, "the controller is rebuilding its state after a restart; retry")
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
	if c.st.CountIn(api.LNMRecovering) > 0 {
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
		c.st.dropHints()
		n := c.st.Counts()
		c.log.Info("state whole again after the restart", "lnms", n.Connected, "vms", n.VMs, "lost", n.Lost)
		c.emit(api.Event{Type: api.EvRecovered, Detail: api.StringMap{"lnms": fmt.Sprint(n.Connected), "vms": fmt.Sprint(n.VMs)}})
	}
}
