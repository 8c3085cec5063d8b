package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/transport"
)

// Config says how to reach and authenticate with a controller.
type Config struct {
	Addr        string        // controller host:port; several, comma-separated, for highly available controllers (the one that answers is used)
	CAFile      string        // site CA certificate (PEM)
	ServerName  string        // name in the controller's certificate; default the host of Addr
	TLS         *tls.Config   // overrides CAFile/ServerName when set
	User        string        // user name
	Password    string        // password
	Cluster     string        // only cache this virtual cluster's VMs
	NoReconnect bool          // do not reconnect after an unexpected disconnect
	MinBackoff  time.Duration // reconnect backoff bounds (exponential, with jitter)
	MaxBackoff  time.Duration
	CallTimeout time.Duration // default deadline of calls whose ctx has none
	ListPage    int           // VMs per list call when loading the cache (default 50,000)
	KeepAlive   time.Duration // how often an idle link is checked (default 5s)
	Logger      *slog.Logger
}

// ErrNotConnected is returned by calls made while the client has no session.
var ErrNotConnected = errors.New("not connected to the controller")

// ConnState is the client's connection state, reported to OnConn callbacks.
type ConnState string

// Connection states.
const (
	Connected    ConnState = "connected"
	Disconnected ConnState = "disconnected"
	Reconnected  ConnState = "reconnected"
	Closed       ConnState = "closed"
)

// Client is the paper's client API: an authenticated session with the
// controller, the cached VM objects of the user (kept current by pushed
// events), and the Table 4 calls. All methods are safe for concurrent use;
// many calls may be in flight at once. Use Go for the paper's asynchronous
// style. Close stops everything the client started.
type Client struct {
	cfg    Config
	tls    *tls.Config
	log    *slog.Logger
	limits transport.Limits

	mu       sync.RWMutex
	sess     *transport.Session
	id       api.Identity
	domain   string
	cache    map[string]*api.VM
	listSeq  uint64 // Seq of the list the cache was loaded from
	handlers map[int]func(api.Event)
	connCB   map[int]func(ConnState, error)
	nextH    int
	closed   bool
	closeCh  chan struct{}
	sessWG   sync.WaitGroup
}

// Connect dials the controller over TLS, authenticates, loads the cached VM
// objects and starts the event loop that keeps them current.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("client: no controller address")
	}
	if cfg.User == "" {
		return nil, errors.New("client: no user name")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Minute
	}
	if cfg.ListPage <= 0 {
		cfg.ListPage = defaultListPage
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tlsCfg := cfg.TLS
	if tlsCfg == nil {
		if cfg.CAFile == "" {
			return nil, errors.New("client: no CA certificate (ca_file) to verify the controller with")
		}
		sn := cfg.ServerName
		if sn == "" {
			first, _, _ := strings.Cut(cfg.Addr, ",")
			host, _, err := net.SplitHostPort(strings.TrimSpace(first))
			if err != nil {
				return nil, fmt.Errorf("client: controller address %q: %w", cfg.Addr, err)
			}
			sn = host
		}
		var err error
		if tlsCfg, err = transport.ClientTLS(cfg.CAFile, "", "", sn); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	lim := transport.DefaultLimits()
	if cfg.KeepAlive > 0 {
		lim.KeepAlive = cfg.KeepAlive
	}
	c := &Client{cfg: cfg, tls: tlsCfg, log: cfg.Logger, limits: lim, cache: map[string]*api.VM{},
		handlers: map[int]func(api.Event){}, connCB: map[int]func(ConnState, error){}, closeCh: make(chan struct{})}
	if err := c.dial(ctx); err != nil {
		return nil, err
	}
	c.notifyConn(Connected, nil)
	return c, nil
}

// dial establishes a session, authenticates and (re)loads the cache.
// While highly available controllers elect a leader every address may
// answer not_leader: it tries them again, a little later each round
// (100 ms up to 1 s), until ctx ends.
func (c *Client) dial(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for {
		err := c.dialOnce(ctx)
		var nl *api.Error
		if err == nil || !errors.As(err, &nl) || nl.Code != api.CodeNotLeader {
			return err
		}
		c.log.Info("no controller leads yet; trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return err
		case <-c.closeCh:
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

func (c *Client) dialOnce(ctx context.Context) error {
	auth := api.AuthArgs{User: c.cfg.User, Password: c.cfg.Password, Cluster: c.cfg.Cluster}
	if err := auth.Validate(); err != nil {
		return fmt.Errorf("authenticating as %s: %w", c.cfg.User, err)
	}
	// Several addresses: highly available controllers, of which only the
	// leader serves. A standby answers the login with where the leader
	// is: that is tried next.
	cands := strings.Split(c.cfg.Addr, ",")
	for i := range cands {
		cands[i] = strings.TrimSpace(cands[i])
	}
	tried := map[string]bool{}
	again := false
	var s *transport.Session
	var rep api.AuthReply
	var err error
	for i := 0; i < len(cands) && i < 16; i++ {
		addr := cands[i]
		if tried[addr] {
			continue
		}
		tried[addr] = true
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err = transport.Dial(dctx, addr, c.tls, c.limits, c.log)
		cancel()
		if err != nil {
			continue
		}
		s.SetMux(transport.NewMux(nil))
		c.sessWG.Add(1)
		go func(s *transport.Session) {
			defer c.sessWG.Done()
			s.Serve(context.Background())
			s.Wait()
		}(s)
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		rep, err = transport.Call(actx, s, api.MAuth, auth)
		cancel()
		if err == nil {
			break
		}
		s.Close()
		var nl *api.Error
		if errors.As(err, &nl) && nl.Code == api.CodeNotLeader {
			if nl.Leader == addr && !again {
				// A standby that names itself was just elected: once more.
				again = true
				tried[addr] = false
			}
			if nl.Leader != "" && !tried[nl.Leader] {
				// the leader next
				cands = append(cands[:i+1], append([]string{nl.Leader}, cands[i+1:]...)...)
			}
			continue
		}
		if errors.As(err, &nl) || len(cands) == 1 {
			// The controller answered: wrong credentials, refused, …
			return fmt.Errorf("authenticating as %s: %w", c.cfg.User, err)
		}
		// The session failed (a controller stopping, or one that stands
		// by and timed out): the next address.
		c.log.Info("logging in failed; trying the next controller", "addr", addr, "err", err)
		err = fmt.Errorf("authenticating as %s at %s: %w", c.cfg.User, addr, err)
	}
	if err != nil {
		return err
	}
	if err := c.load(ctx, s, &rep); err != nil {
		s.Close()
		return err
	}
	return nil
}

// defaultListPage is how many VMs a cache load asks for at once: about
// 11 MB of JSON, a third of the frame limit, leaving room for policy data.
const defaultListPage = 50000

// feed is one event stream of a session. Until the cache has been loaded
// the stream's events are held in pending (the feed is read all the time,
// so a long list never makes the controller cut a lagging feed off).
type feed struct {
	mu      sync.Mutex
	loading bool
	pending []api.Event
	done    chan struct{} // closed when the load that opened the feed returns
}

// load opens the event feed on s, waits until it is live, loads the cache
// with list and then applies the events that arrived meanwhile and are
// newer than the list. With rep set (a new session) the session becomes
// the client's current one; without (a resync after the feed fell behind)
// s must still be current.
func (c *Client) load(ctx context.Context, s *transport.Session, rep *api.AuthReply) error {
	evs, err := transport.OpenStream(ctx, s, api.MEvents, api.EventsArgs{Cluster: c.cfg.Cluster})
	if err != nil {
		return fmt.Errorf("opening event stream: %w", err)
	}
	if env, err := evs.Recv(30 * time.Second); err != nil || env.Method != "ready" {
		evs.Close()
		if err == nil {
			err = fmt.Errorf("event stream: %s", env.Method)
		}
		return fmt.Errorf("opening event stream: %w", err)
	}
	f := &feed{loading: true, done: make(chan struct{})}
	defer close(f.done)
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		evs.Close()
		return errors.New("client closed")
	}
	c.sessWG.Add(1) // before Close can start waiting: it sets closed under mu first
	c.mu.RUnlock()
	go c.eventLoop(s, evs, f)
	// The list comes in pages (one frame each; a user's quarter of a
	// million VMs is 55 MB). The first page's Seq is the base: every change
	// after it, including to VMs of later pages, has an event numbered
	// above it, applied on top (events carry whole objects with versions).
	var lst api.ListReply
	cache := map[string]*api.VM{}
	first := true
	err = listPages(api.ListArgs{Cluster: c.cfg.Cluster, Limit: c.cfg.ListPage}, func(a api.ListArgs, page *api.ListReply) error {
		lctx, lcancel := context.WithTimeout(ctx, 60*time.Second)
		defer lcancel()
		r, err := transport.Call(lctx, s, api.MList, a)
		if err == nil {
			*page = *r
		}
		return err
	}, func(page *api.ListReply) {
		if first {
			lst.Seq, first = page.Seq, false
		}
		for _, v := range page.VMs {
			cache[v.Name] = v
		}
	})
	if err != nil {
		evs.Close()
		return fmt.Errorf("loading VMs (%d so far): %w", len(cache), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		evs.Close()
		return errors.New("client closed")
	}
	var old *transport.Session
	if rep != nil {
		old = c.sess
		c.sess = s
		c.id = rep.Identity
		c.domain = rep.Domain
	} else if c.sess != s {
		c.mu.Unlock()
		evs.Close()
		return errors.New("session replaced during resync")
	}
	base := lst.Seq
	if rep == nil && lst.Seq < c.listSeq {
		// A load that overtook this one installed a newer list: keep it,
		// and apply only what is newer than that.
		base = c.listSeq
	} else {
		c.cache = cache
		c.listSeq = lst.Seq
	}
	c.mu.Unlock()
	if old != nil && old != s {
		old.Close()
	}
	// The list is authoritative as of its Seq; what was held back and is
	// newer goes on top (events carry whole objects, so order by number is
	// all that matters).
	for _, ev := range f.pending {
		if ev.Seq > base {
			c.apply(ev)
		}
	}
	f.pending, f.loading = nil, false
	return nil
}

func (c *Client) eventLoop(s *transport.Session, st *transport.Stream, f *feed) {
	defer c.sessWG.Done()
	bound := 3*s.Limits().KeepAlive + 5*time.Second
	deliver := func(evs ...api.Event) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.loading {
			f.pending = append(f.pending, evs...)
			return
		}
		for _, ev := range evs {
			c.apply(ev)
		}
	}
	var err error
	reload := "" // why the cache is to be reloaded on this session
	// recovered: a restarted controller sends its adoptions to no feed
	// while it rebuilds its state, then this once it is whole.
	recovered := func(evs ...api.Event) bool {
		for i := range evs {
			if evs[i].Type == api.EvRecovered {
				return true
			}
		}
		return false
	}
	for {
		env, rerr := st.Recv(bound)
		err = rerr
		if err != nil {
			break
		}
		switch env.Method {
		case "event":
			var ev api.Event
			if transport.Unmarshal(env.Args, &ev) == nil {
				deliver(ev)
				if recovered(ev) {
					reload = "the controller has rebuilt its state after a restart"
				}
			}
		case "events":
			var evs []api.Event
			if transport.Unmarshal(env.Args, &evs) == nil {
				deliver(evs...)
				if recovered(evs...) {
					reload = "the controller has rebuilt its state after a restart"
				}
			}
		case "overflow":
			reload = "the event feed fell behind"
		}
		if reload != "" {
			err = errors.New(reload + "; reloading")
			break
		}
	}
	st.Close()
	if reload != "" && !s.IsClosed() {
		// Open a new feed and reload on the same session (no new
		// handshake or authentication).
		c.mu.RLock()
		if c.closed {
			c.mu.RUnlock()
			return
		}
		c.sessWG.Add(1)
		c.mu.RUnlock()
		go func() {
			defer c.sessWG.Done()
			// The load that opened this feed may still be listing (a
			// controller can finish recovering, or a feed overflow, during
			// a long list): reload once it has made s current.
			select {
			case <-f.done:
			case <-c.closeCh:
				return
			}
			c.mu.RLock()
			current := !c.closed && c.sess == s
			c.mu.RUnlock()
			if !current {
				return // that load failed and s is being replaced, or a newer session won
			}
			c.log.Info("reloading the cache", "why", reload)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if err := c.load(ctx, s, nil); err != nil {
				c.log.Info("reloading the cache failed; reconnecting", "why", reload, "err", err)
				c.lost(s, err)
			}
		}()
		return
	}
	c.lost(s, err)
}

// lost handles the end of session s: if it is still the client's current
// session, it is closed and the reconnect loop starts (unless disabled).
func (c *Client) lost(s *transport.Session, err error) {
	s.Close()
	c.mu.Lock()
	current := c.sess == s
	if current {
		c.sess = nil // only the first to notice starts the reconnect
	}
	closed := c.closed
	c.mu.Unlock()
	if !current || closed {
		return
	}
	c.notifyConn(Disconnected, err)
	if c.cfg.NoReconnect {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.sessWG.Add(1)
		go c.reconnectLoop()
	}
}

func (c *Client) reconnectLoop() {
	defer c.sessWG.Done()
	bo := transport.NewBackoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	for {
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-c.closeCh:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		stop := context.AfterFunc(chanContext(c.closeCh), cancel)
		err := c.dial(ctx)
		stop()
		cancel()
		if err == nil {
			c.notifyConn(Reconnected, nil)
			return
		}
		c.log.Info("reconnect failed", "err", err)
		if errors.Is(err, api.ErrUnauthorized) {
			c.notifyConn(Disconnected, err)
			return
		}
	}
}

// chanContext is a context done when ch closes.
type chanContext <-chan struct{}

func (c chanContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c chanContext) Done() <-chan struct{}       { return c }
func (c chanContext) Value(any) any               { return nil }
func (c chanContext) Err() error {
	select {
	case <-c:
		return context.Canceled
	default:
		return nil
	}
}

// apply updates the cache from a pushed event and runs the callbacks.
func (c *Client) apply(ev api.Event) {
	c.mu.Lock()
	if v := ev.VM; v != nil && !v.Unmanage && v.Owner == c.id.User {
		switch {
		case v.State == api.StateDestroyed || (ev.Type == api.EvStartComplete && !ev.OK && v.State == api.StateFailed):
			delete(c.cache, v.Name)
		default:
			if old := c.cache[v.Name]; old == nil || old.Version <= v.Version {
				if c.cfg.Cluster == "" || v.Cluster == c.cfg.Cluster {
					cv := v.Clone()
					if old != nil && cv.Usage == nil {
						cv.Usage = old.Usage
					}
					c.cache[v.Name] = cv
				}
			}
		}
	}
	hs := make([]func(api.Event), 0, len(c.handlers))
	for _, h := range c.handlers {
		hs = append(hs, h)
	}
	c.mu.Unlock()
	for _, h := range hs {
		h(ev)
	}
}

func (c *Client) notifyConn(st ConnState, err error) {
	c.mu.RLock()
	cbs := make([]func(ConnState, error), 0, len(c.connCB))
	for _, f := range c.connCB {
		cbs = append(cbs, f)
	}
	c.mu.RUnlock()
	for _, f := range cbs {
		f(st, err)
	}
}

// OnEvent registers a callback for every pushed event (state changes of
// the user's VMs, completions). Callbacks run on the event goroutine after
// the cache is updated; keep them short: while one runs, no event is read
// (the controller cuts a feed that falls too far behind, and the client
// then reloads its cache), and Close waits for it to return. The returned
// func unregisters.
func (c *Client) OnEvent(f func(api.Event)) (cancel func()) {
	c.mu.Lock()
	id := c.nextH
	c.nextH++
	c.handlers[id] = f
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.handlers, id)
		c.mu.Unlock()
	}
}

// OnConn registers a callback for connection state changes.
func (c *Client) OnConn(f func(ConnState, error)) (cancel func()) {
	c.mu.Lock()
	id := c.nextH
	c.nextH++
	c.connCB[id] = f
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.connCB, id)
		c.mu.Unlock()
	}
}

// Reconnect drops the current session and connects again with the stored
// credentials, flushing and reloading the cache.
func (c *Client) Reconnect(ctx context.Context) error {
	if err := c.dial(ctx); err != nil {
		return err
	}
	c.notifyConn(Reconnected, nil)
	return nil
}

// Disconnect closes the session but keeps the client usable by Reconnect.
func (c *Client) Disconnect() {
	c.mu.Lock()
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// Close ends the client for good.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closeCh)
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
	c.sessWG.Wait()
	c.notifyConn(Closed, nil)
	return nil
}

// Connected reports whether a session is up.
func (c *Client) Connected() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.sess != nil && !c.sess.IsClosed()
}

// Identity is who the session is authenticated as.
func (c *Client) Identity() api.Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.id
}

// Domain is the Usher domain of the controller.
func (c *Client) Domain() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.domain
}

// CachedCount is how many VMs the cache holds (VMs copies them all).
func (c *Client) CachedCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.cache)
}

// VMs returns the cached VM objects, sorted by cluster and index.
func (c *Client) VMs() []*api.VM {
	c.mu.RLock()
	out := make([]*api.VM, 0, len(c.cache))
	for _, v := range c.cache {
		out = append(out, v.Clone())
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Cluster != out[j].Cluster {
			return out[i].Cluster < out[j].Cluster
		}
		if len(out[i].Short) != len(out[j].Short) {
			return len(out[i].Short) < len(out[j].Short)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// VM returns one cached VM.
func (c *Client) VM(name string) (*api.VM, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.cache[name]
	if !ok {
		return nil, false
	}
	return v.Clone(), true
}

// Clusters names the virtual clusters among the cached VMs.
func (c *Client) CachedClusters() []string {
	c.mu.RLock()
	set := map[string]bool{}
	for _, v := range c.cache {
		set[v.Cluster] = true
	}
	c.mu.RUnlock()
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Expand resolves a VM set expression against the cache (see ExpandVMs).
func (c *Client) Expand(set string) ([]string, error) {
	return ExpandVMs(set, c.VMs(), c.Domain())
}

func (c *Client) session() (*transport.Session, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.sess == nil || c.sess.IsClosed() {
		return nil, ErrNotConnected
	}
	return c.sess, nil
}

// Do calls any method of the client link (package api) on c's session,
// for tools that need a call this package does not wrap. A call without a
// deadline gets Config.CallTimeout.
func Do[A, R any](ctx context.Context, c *Client, m api.Method[A, R], a A) (R, error) {
	var zero R
	s, err := c.session()
	if err != nil {
		return zero, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	return transport.Call(ctx, s, m, a)
}

// List implements list(vm list, status). Without names or a limit it
// fetches every VM in pages of Config.ListPage and returns them in one
// reply, ordered as an unpaged list.
func (c *Client) List(ctx context.Context, a api.ListArgs) (*api.ListReply, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if a.Limit > 0 || len(a.Names) > 0 {
		return Do(ctx, c, api.MList, a)
	}
	// Everything asked for: in pages (a frame holds about 150,000 VMs),
	// put together in the display order of an unpaged list.
	var out *api.ListReply
	a.Limit = c.cfg.ListPage
	err := listPages(a, func(a api.ListArgs, page *api.ListReply) error {
		r, err := Do(ctx, c, api.MList, a)
		if err == nil {
			*page = *r
		}
		return err
	}, func(page *api.ListReply) {
		if out == nil {
			out = page
		} else {
			out.VMs = append(out.VMs, page.VMs...)
		}
	})
	if err != nil {
		return nil, err
	}
	out.More = false
	api.SortVMs(out.VMs)
	return out, nil
}

// listPages lists a (a.Limit VMs a page) with call, from the first page to
// the last, handing each page to each.
func listPages(a api.ListArgs, call func(api.ListArgs, *api.ListReply) error, each func(*api.ListReply)) error {
	for {
		page := new(api.ListReply)
		if err := call(a, page); err != nil {
			return err
		}
		each(page)
		if !page.More || len(page.VMs) == 0 {
			return nil
		}
		a.After = page.VMs[len(page.VMs)-1].Name
	}
}

// ListLNMs implements list_lnms(lnm list, status).
func (c *Client) ListLNMs(ctx context.Context, names []string, status bool) ([]*api.LNM, error) {
	r, err := Do(ctx, c, api.MListLNMs, api.ListLNMsArgs{Names: names, Status: status})
	if err != nil {
		return nil, err
	}
	return r.LNMs, nil
}

// SetLNMMode isolates (api.ModeIsolated), drains (api.ModeDraining) or
// restores (api.ModeActive) a node, with a reason (admins). It returns the
// node's record as changed.
func (c *Client) SetLNMMode(ctx context.Context, lnm string, mode api.NodeMode, reason string) (*api.LNM, error) {
	a := api.SetLNMModeArgs{LNM: lnm, Mode: mode, Reason: reason}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MSetLNMMode, a)
}

// Reservations lists, creates (admins), extends or cancels reservations
// (see api.ReservationsArgs).
func (c *Client) Reservations(ctx context.Context, a api.ReservationsArgs) (api.ReservationsReply, error) {
	if err := a.Validate(); err != nil {
		return api.ReservationsReply{}, err
	}
	return Do(ctx, c, api.MReservations, a)
}

// Clusters lists virtual clusters (all: everyone's, for admins).
func (c *Client) Clusters(ctx context.Context, all bool) ([]api.Cluster, error) {
	r, err := Do(ctx, c, api.MClusters, api.ClustersArgs{All: all})
	return r.Clusters, err
}

// Start implements start(vm list, lnm list): Count new VMs in Cluster on
// the suggested LNMs. The result says exactly what was started. Arguments
// the controller would refuse are refused here, naming the field.
func (c *Client) Start(ctx context.Context, a api.StartArgs) (*api.Result, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MStart, a)
}

// OpOn implements op_on(operation, vm list). vms is a set expression
// resolved against the cache first.
func (c *Client) OpOn(ctx context.Context, op api.Op, vms string, args map[string]string) (*api.Result, error) {
	if _, err := api.ParseOp(string(op)); err != nil {
		return nil, err
	}
	names, err := c.Expand(vms)
	if err != nil {
		return nil, err
	}
	return c.OpOnNames(ctx, op, names, args)
}

// OpOnNames is OpOn on already-resolved full names.
func (c *Client) OpOnNames(ctx context.Context, op api.Op, names []string, args map[string]string) (*api.Result, error) {
	return c.Op(ctx, api.OpArgs{Op: op, VMs: names, Args: args})
}

// Op sends an op_on request as it is (full names, options, request id).
func (c *Client) Op(ctx context.Context, a api.OpArgs) (*api.Result, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MOpOn, a)
}

// Pause pauses the VMs of a set.
func (c *Client) Pause(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpPause, vms, nil)
}

// Resume resumes paused VMs.
func (c *Client) Resume(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpResume, vms, nil)
}

// Shutdown halts VMs gracefully.
func (c *Client) Shutdown(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpShutdown, vms, nil)
}

// Reboot restarts VMs.
func (c *Client) Reboot(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpReboot, vms, nil)
}

// Hibernate saves VMs' memory to storage.
func (c *Client) Hibernate(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpHibernate, vms, nil)
}

// Restore brings hibernated VMs back.
func (c *Client) Restore(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpRestore, vms, nil)
}

// Destroy hard-stops and removes VMs.
func (c *Client) Destroy(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpDestroy, vms, nil)
}

// Cycle destroys and restarts VMs.
func (c *Client) Cycle(ctx context.Context, vms string) (*api.Result, error) {
	return c.OpOn(ctx, api.OpCycle, vms, nil)
}

// Forget removes the records of missing or lost VMs of a set (set
// expression, resolved against the cache).
func (c *Client) Forget(ctx context.Context, vms string) (*api.Result, error) {
	names, err := c.Expand(vms)
	if err != nil {
		return nil, err
	}
	a := api.ForgetArgs{VMs: names}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MForget, a)
}

// Migrate implements migrate(vm list, lnm list); both are set expressions.
func (c *Client) Migrate(ctx context.Context, vms, lnms string) (*api.Result, error) {
	names, err := c.Expand(vms)
	if err != nil {
		return nil, err
	}
	var targets []string
	if lnms != "" {
		all, err := c.ListLNMs(ctx, nil, false)
		if err != nil {
			return nil, err
		}
		known := make([]string, len(all))
		for i, l := range all {
			known[i] = l.Info.Name
		}
		if targets, err = ExpandLNMs(lnms, known); err != nil {
			return nil, err
		}
	}
	a := api.MigrateArgs{VMs: names, LNMs: targets}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MMigrate, a)
}

// Plan dry-runs a request through the controller's live policy chain.
func (c *Client) Plan(ctx context.Context, a api.PlanArgs) (*api.Result, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return Do(ctx, c, api.MPlan, a)
}

// Policy makes an admin call on the policy host.
func (c *Client) Policy(ctx context.Context, a api.PolicyArgs) (api.PolicyReply, error) {
	return Do(ctx, c, api.MPolicy, a)
}

// Status is the admin status call: the sizes of the controller's state
// (and, as a asks, an invariant check and a collection first).
func (c *Client) Status(ctx context.Context, a api.StatusArgs) (api.Status, error) {
	return Do(ctx, c, api.MStatus, a)
}

// Images lists the site's image store (the names start's image=… takes).
func (c *Client) Images(ctx context.Context) (api.ImagesReply, error) {
	return Do(ctx, c, api.MImages, api.Empty{})
}

// Keys lists, adds or removes the caller's SSH public keys (admins: any
// user's, naming a.User). New VMs get their owner's keys.
func (c *Client) Keys(ctx context.Context, a api.KeysArgs) (api.KeysReply, error) {
	if err := a.Validate(); err != nil {
		return api.KeysReply{}, err
	}
	return Do(ctx, c, api.MKeys, a)
}

// Tokens lists, creates or revokes the caller's API tokens (for the HTTP
// API); the reply to create holds the new token's secret, shown once.
func (c *Client) Tokens(ctx context.Context, a api.TokensArgs) (api.TokensReply, error) {
	if err := a.Validate(); err != nil {
		return api.TokensReply{}, err
	}
	return Do(ctx, c, api.MTokens, a)
}

// Watch streams every event the user may see (admins: all) to f until ctx
// ends or the session drops.
func (c *Client) Watch(ctx context.Context, f func(api.Event)) error {
	s, err := c.session()
	if err != nil {
		return err
	}
	st, err := transport.OpenStream(ctx, s, api.MEvents, api.EventsArgs{Watch: true})
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, st.Abort) // ends a Recv in progress
	defer stop()
	bound := 3*s.Limits().KeepAlive + 5*time.Second
	for {
		env, err := st.Recv(bound)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch env.Method {
		case "event":
			var ev api.Event
			if transport.Unmarshal(env.Args, &ev) == nil {
				f(ev)
			}
		case "events":
			var evs []api.Event
			if transport.Unmarshal(env.Args, &evs) == nil {
				for _, ev := range evs {
					f(ev)
				}
			}
		case "error":
			var e api.Error
			if err := transport.Unmarshal(env.Args, &e); err != nil || e.Code == "" {
				return errors.New("watch: malformed error from the controller")
			}
			return &e
		case "overflow":
			return errors.New("watch fell behind the event rate")
		}
	}
}

// Call is an asynchronous call in flight (the paper's deferred result).
type Call struct {
	Done   chan struct{}
	Result any
	Err    error
}

// Go runs f asynchronously and returns at once; Done closes when it ends.
func (c *Client) Go(ctx context.Context, f func(ctx context.Context) (any, error)) *Call {
	call := &Call{Done: make(chan struct{})}
	go func() {
		defer close(call.Done)
		call.Result, call.Err = f(ctx)
	}()
	return call
}
