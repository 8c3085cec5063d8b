package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/images"
	"github.com/usher-vm/usher/transport"
)

// PolicyAdmin serves the admin-only policy calls (status, register,
// unregister). The Lua host provides it.
type PolicyAdmin func(ctx context.Context, id api.Identity, a api.PolicyArgs) (api.PolicyReply, error)

// Options configure the controller's network endpoint.
type Options struct {
	Server         transport.ServerOptions
	ReportInterval time.Duration // how often LNMs report usage
	AuthFailures   int           // failed logins before a session is cut (default 3)
	Logins         LoginLimits   // backoff after failed logins, per user and per address
	Policy         PolicyAdmin
	ControllerID   string
	Known          KnownStore // persisted list of LNMs (nil: none)
	// Term is this controller's leadership term (highly available
	// controllers; 0 otherwise): LNMs that have seen a newer one refuse it.
	Term     int64
	Keys     *KeyStore   // users' SSH public keys (nil: keys calls fail)
	Tokens   *TokenStore // API tokens (nil: tokens calls fail, no Bearer logins)
	Metrics  *Metrics    // Prometheus metrics on the HTTP API's /metrics (nil: none)
	ImageDir string      // the site image store as the controller sees it ("" = none)
	// Logger receives the endpoint's own records (logins, registrations,
	// recovery); the transport logs through Server.Logger.
	Logger *slog.Logger
	// MaxRegistering bounds LNM registrations (lnm_hello: node info,
	// status, the list of its guests, adoption) in progress at once; more
	// wait their turn. After a controller restart every LNM of the site
	// registers at the same moment. Default 64.
	MaxRegistering int
}

// Server serves the controller's remote APIs over transport: the client
// API (api.MAuth … api.MEvents) to authenticated users, and the LNM link
// (api.MHello, api.MReports, and calls back on api.Node) to peers holding
// an LNM certificate. Access is checked in one place (guard) against each
// method's declared api.Access.
type Server struct {
	c      *core.Controller
	opts   Options
	srv    *transport.Server
	log    *slog.Logger
	logins *loginLimiter
	client *transport.Mux
	node   *transport.Mux

	mu       sync.Mutex
	lnms     map[string]*transport.Session // registered sessions by node
	live     map[string]int                // open LNM sessions by node, registered or not
	sessions atomic.Int64
	regSem   chan struct{} // registrations in progress
}

// clientState is what the endpoint knows of a client session.
type clientState struct {
	peer     transport.Peer
	id       atomic.Pointer[api.Identity]
	failures atomic.Int32
}

// nodeState is what the endpoint knows of an LNM session.
type nodeState struct {
	peer     transport.Peer
	gen      atomic.Uint64
	attached chan struct{} // closed once registered
	once     sync.Once
	hello    chan struct{} // closed when lnm_hello arrives
	helloed  sync.Once
}

// New builds the endpoint for c.
func New(c *core.Controller, tlsCfg *tls.Config, opts Options) *Server {
	if opts.ReportInterval <= 0 {
		opts.ReportInterval = 5 * time.Second
	}
	if opts.AuthFailures <= 0 {
		opts.AuthFailures = 3
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxRegistering <= 0 {
		opts.MaxRegistering = 64
	}
	s := &Server{c: c, opts: opts, log: log, logins: newLoginLimiter(opts.Logins),
		lnms: map[string]*transport.Session{}, live: map[string]int{}, regSem: make(chan struct{}, opts.MaxRegistering)}
	s.client = s.clientMux()
	s.node = s.nodeMux()
	s.srv = transport.NewServer(tlsCfg, opts.Server, s.onSession)
	return s
}

// Serve accepts connections on ln until ctx ends, then waits for every
// session it served to end.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.srv.Serve(ctx, ln)
}

// Sessions counts the open sessions (clients and LNMs).
func (s *Server) Sessions() int { return int(s.sessions.Load()) }

// reconnected reports whether LNM name is back: it holds a session,
// registered or registering (possibly waiting its turn).
func (s *Server) reconnected(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[name] > 0
}

func (s *Server) onSession(ctx context.Context, sess *transport.Session, p transport.Peer) {
	s.sessions.Add(1)
	defer s.sessions.Add(-1)
	if p.LNM != "" {
		s.serveLNM(ctx, sess, p)
		return
	}
	st := &clientState{peer: p}
	sess.SetValue(st)
	sess.SetMux(s.client)
	sess.Serve(ctx)
}

// guard is the one access check: every call and stream passes it with
// its declared access before its handler runs.
func (s *Server) guard(ctx context.Context, sess *transport.Session, method string, access api.Access) error {
	switch st := sess.Value().(type) {
	case *clientState:
		switch access {
		case api.Public:
			return nil
		case api.Authenticated, api.AdminOnly:
			id := st.id.Load()
			if id == nil {
				return api.Errorf(api.ErrUnauthorized, "%s: log in first (auth)", method)
			}
			if access == api.AdminOnly && !id.Admin {
				return api.Errorf(api.ErrForbidden, "%s needs an admin", method)
			}
			return nil
		}
	case *nodeState:
		if access == api.FromNode {
			return nil
		}
	}
	return api.Errorf(api.ErrForbidden, "%s is for %s", method, access)
}

// identity is the caller of a client handler (the guard let it through).
func identity(ctx context.Context) api.Identity {
	if st, ok := transport.SessionFrom(ctx).Value().(*clientState); ok {
		if id := st.id.Load(); id != nil {
			return *id
		}
	}
	return api.Identity{} // unreachable past the guard
}

// handle registers a client method whose handler gets the caller.
func handle[A, R any](m *transport.Mux, d api.Method[A, R], f func(ctx context.Context, id api.Identity, a A) (R, error)) {
	transport.Handle(m, d, func(ctx context.Context, a A) (R, error) { return f(ctx, identity(ctx), a) })
}

// ---------------------------------------------------------------------------
// clients

func (s *Server) clientMux() *transport.Mux {
	m := transport.NewMux(s.guard)
	transport.Handle(m, api.MAuth, s.auth)
	handle(m, api.MWhoami, func(ctx context.Context, id api.Identity, _ api.Empty) (api.Identity, error) { return id, nil })
	handle(m, api.MList, s.c.List)
	handle(m, api.MListLNMs, s.c.ListLNMs)
	handle(m, api.MClusters, s.c.Clusters)
	handle(m, api.MStart, s.c.Start)
	handle(m, api.MOpOn, s.c.OpOn)
	handle(m, api.MMigrate, s.c.Migrate)
	handle(m, api.MForget, s.c.Forget)
	handle(m, api.MPlan, s.c.Plan)
	handle(m, api.MSetLNMMode, s.c.SetLNMMode)
	handle(m, api.MReservations, s.c.Reservations)
	handle(m, api.MImages, s.images)
	handle(m, api.MKeys, s.keys)
	handle(m, api.MTokens, func(ctx context.Context, id api.Identity, a api.TokensArgs) (api.TokensReply, error) {
		return s.tokens(ctx, id, a, false)
	})
	handle(m, api.MStatus, func(ctx context.Context, id api.Identity, a api.StatusArgs) (api.Status, error) {
		st := api.Status{Counts: s.c.State().Counts(), Sessions: s.Sessions(), Feeds: s.c.Subscribers()}
		if a.Check {
			if err := s.c.State().Check(); err != nil {
				st.Invariants = err.Error()
			}
		}
		if a.GC {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st.Goroutines, st.HeapBytes = runtime.NumGoroutine(), ms.HeapAlloc
		return st, nil
	})
	handle(m, api.MPolicy, func(ctx context.Context, id api.Identity, a api.PolicyArgs) (api.PolicyReply, error) {
		if err := a.Validate(); err != nil {
			return api.PolicyReply{}, err
		}
		if s.opts.Policy == nil {
			return api.PolicyReply{}, api.Errorf(api.ErrUnavailable, "no policy host")
		}
		return s.opts.Policy(ctx, id, a)
	})
	transport.HandleStream(m, api.MEvents, s.events)
	transport.HandleStream(m, api.MConsole, s.console)
	return m
}

// auth logs a client session in through the authentication chain, after
// the login backoff of its user and address.
func (s *Server) auth(ctx context.Context, a api.AuthArgs) (api.AuthReply, error) {
	sess := transport.SessionFrom(ctx)
	st := sess.Value().(*clientState)
	if st.id.Load() != nil {
		return api.AuthReply{}, api.Errorf(api.ErrBadRequest, "session already authenticated")
	}
	fail := func(err error) (api.AuthReply, error) {
		if st.failures.Add(1) >= int32(s.opts.AuthFailures) {
			s.log.Warn("closing session after repeated authentication failures", "remote", st.peer.Remote)
			time.AfterFunc(100*time.Millisecond, func() { sess.Close() })
		}
		return api.AuthReply{}, err
	}
	if err := a.Validate(); err != nil {
		return fail(err)
	}
	if wait := s.logins.wait(a.User, st.peer.IP); wait > 0 {
		s.opts.Metrics.login("backoff")
		return fail(api.RetryAfter(api.Errorf(api.ErrUnauthorized,
			"too many failed logins for %s or from %s: try again in %s", a.User, st.peer.IP, wait.Round(time.Second)), wait))
	}
	id, err := s.c.Authenticate(ctx, core.Credentials{User: a.User, Password: a.Password, Remote: st.peer.Remote})
	if err != nil {
		s.logins.failed(a.User, st.peer.IP)
		s.opts.Metrics.login("failed")
		return fail(err)
	}
	s.logins.succeeded(a.User, st.peer.IP)
	s.opts.Metrics.login("ok")
	st.id.Store(&id)
	sess.Authenticated()
	s.log.Info("user connected", "user", id.User, "remote", st.peer.Remote)
	return api.AuthReply{Identity: id, Domain: s.c.Domain()}, nil
}

// events serves a client's event feed: "ready", then queued events in
// batches, "beat" every keepalive, and "overflow" if it falls behind.
func (s *Server) events(ctx context.Context, a api.EventsArgs, st *transport.Stream) error {
	defer st.Close()
	sess := transport.SessionFrom(ctx)
	if err := a.Validate(); err != nil {
		st.Send("error", api.AsError(err))
		return err
	}
	sub, err := s.c.Subscribe(identity(ctx), a.Cluster, a.Watch)
	if err != nil {
		st.Send("error", api.AsError(err))
		return err
	}
	defer s.c.Unsubscribe(sub)
	beat := time.NewTicker(sess.Limits().KeepAlive)
	defer beat.Stop()
	if err := st.Send("ready", struct{}{}); err != nil {
		return err
	}
	for {
		select {
		case <-sub.Ready():
			// Whatever is queued goes out, up to 512 events a frame.
			batch, open := sub.Take(512)
			var err error
			switch len(batch) {
			case 0:
			case 1:
				err = st.Send("event", batch[0])
			default:
				err = st.Send("events", batch)
			}
			if err != nil {
				return err
			}
			if !open {
				if sub.Overflowed() {
					st.Send("overflow", struct{}{})
					return errors.New("client fell behind")
				}
				return nil
			}
		case <-beat.C:
			if err := st.Send("beat", struct{}{}); err != nil {
				return err
			}
		case <-sess.Done():
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// ---------------------------------------------------------------------------
// LNMs

// nodeLink is the controller's capability for one connected LNM: api.Node
// called over its session.
type nodeLink struct{ s *transport.Session }

var _ api.Node = (*nodeLink)(nil)

func (l *nodeLink) NodeInfo(ctx context.Context) (api.NodeInfo, error) {
	return transport.Call(ctx, l.s, api.LGetNodeInfo, api.Empty{})
}
func (l *nodeLink) NodeStatus(ctx context.Context) (api.NodeStatus, error) {
	return transport.Call(ctx, l.s, api.LGetNodeStatus, api.Empty{})
}
func (l *nodeLink) ListGuests(ctx context.Context) (api.GuestsReply, error) {
	return transport.Call(ctx, l.s, api.LListGuests, api.Empty{})
}
func (l *nodeLink) Details(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error) {
	return transport.Call(ctx, l.s, api.LGetDetails, a)
}
func (l *nodeLink) Status(ctx context.Context, a api.NamesArgs) (api.GuestsReply, error) {
	return transport.Call(ctx, l.s, api.LGetStatus, a)
}
func (l *nodeLink) Receive(ctx context.Context, a api.ReceiveArgs) error {
	_, err := transport.Call(ctx, l.s, api.LReceive, a)
	return err
}
func (l *nodeLink) Sync(ctx context.Context, a api.ReceiveArgs) error {
	_, err := transport.Call(ctx, l.s, api.LSync, a)
	return err
}
func (l *nodeLink) Forget(ctx context.Context, a api.NamesArgs) error {
	_, err := transport.Call(ctx, l.s, api.LForget, a)
	return err
}
func (l *nodeLink) Start(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	return transport.Call(ctx, l.s, api.LStart, a)
}
func (l *nodeLink) OpOn(ctx context.Context, a api.LNMOpArgs) (api.LNMResults, error) {
	return transport.Call(ctx, l.s, api.LOpOn, a)
}
func (l *nodeLink) PrepareMigration(ctx context.Context, a api.LNMStartArgs) (api.LNMResults, error) {
	return transport.Call(ctx, l.s, api.LPrepareMigration, a)
}
func (l *nodeLink) AbortMigration(ctx context.Context, a api.NamesArgs) (api.LNMResults, error) {
	return transport.Call(ctx, l.s, api.LAbortMigration, a)
}
func (l *nodeLink) Migrate(ctx context.Context, a api.LNMMigrateArgs) (api.LNMResults, error) {
	return transport.Call(ctx, l.s, api.LMigrate, a)
}

func (s *Server) nodeMux() *transport.Mux {
	m := transport.NewMux(s.guard)
	transport.Handle(m, api.MHello, s.hello)
	transport.HandleStream(m, api.MReports, s.reports)
	return m
}

// hello registers an LNM: admission (a herd registers in turn), the name
// must be its certificate's, the list of its guests, the known-LNM file,
// then the controller attaches it.
func (s *Server) hello(ctx context.Context, a api.Hello) (api.HelloReply, error) {
	sess := transport.SessionFrom(ctx)
	ns := sess.Value().(*nodeState)
	ns.helloed.Do(func() { close(ns.hello) })
	// Admission: a herd of LNMs reconnecting after a controller restart
	// registers in turn instead of all at once (where each would take long
	// enough to time out, reconnect and start over).
	select {
	case s.regSem <- struct{}{}:
		defer func() { <-s.regSem }()
	case <-ctx.Done():
		return api.HelloReply{}, api.Errorf(api.ErrUnavailable, "controller busy registering other LNMs: %v", ctx.Err())
	case <-sess.Done():
		return api.HelloReply{}, api.Errorf(api.ErrUnavailable, "session closed while waiting to register")
	}
	if a.Node.Name != ns.peer.LNM {
		s.log.Warn("LNM certificate names another node", "cert", ns.peer.LNM, "claimed", a.Node.Name, "remote", ns.peer.Remote)
		time.AfterFunc(100*time.Millisecond, func() { sess.Close() })
		return api.HelloReply{}, api.Errorf(api.ErrForbidden, "certificate is for node %q, not %q", ns.peer.LNM, a.Node.Name)
	}
	if a.MinTerm > s.opts.Term {
		return api.HelloReply{}, api.Errorf(api.ErrForbidden, "this controller leads in term %d; the LNM has seen term %d: a newer leader exists", s.opts.Term, a.MinTerm)
	}
	if err := a.Validate(); err != nil {
		return api.HelloReply{}, err
	}
	if ns.gen.Load() != 0 {
		return api.HelloReply{}, api.Errorf(api.ErrBadRequest, "already registered")
	}
	// The newest session of a node wins; the old one is closed.
	s.mu.Lock()
	old := s.lnms[ns.peer.LNM]
	s.lnms[ns.peer.LNM] = sess
	s.mu.Unlock()
	if old != nil && old != sess {
		old.Close()
	}
	link := &nodeLink{s: sess}
	guests, err := link.ListGuests(ctx)
	if err != nil {
		return api.HelloReply{}, api.Errorf(api.ErrUnavailable, "list_guests: %v", err)
	}
	// Durable before visible: once an LNM is listed as connected, a
	// controller crash will still announce itself to it.
	if s.opts.Known != nil {
		if err := s.opts.Known.Record(a.Node); err != nil {
			s.log.Error("persisting known LNMs", "err", err)
		}
	}
	g, err := s.c.AttachLNM(ctx, a, link, guests.Guests)
	if err != nil {
		return api.HelloReply{}, err
	}
	ns.gen.Store(g)
	ns.once.Do(func() { close(ns.attached) })
	return api.HelloReply{Domain: s.c.Domain(), ReportInterval: s.opts.ReportInterval.Milliseconds(), ControllerID: s.opts.ControllerID, Term: s.opts.Term}, nil
}

// reports reads an LNM's report stream until it ends or falls silent.
func (s *Server) reports(ctx context.Context, _ api.Empty, st *transport.Stream) error {
	defer st.Close()
	sess := transport.SessionFrom(ctx)
	ns := sess.Value().(*nodeState)
	select {
	case <-ns.attached:
	case <-sess.Done():
		return nil
	}
	g := ns.gen.Load()
	// Reports come every interval and heartbeats in between; silence
	// longer than this means the LNM or the network is gone.
	bound := 3*s.opts.ReportInterval + sess.Limits().KeepAlive
	for {
		env, err := st.Recv(bound)
		if err != nil {
			s.log.Warn("LNM report stream ended", "lnm", ns.peer.LNM, "err", err)
			sess.Close()
			return err
		}
		if env.Method == "beat" {
			continue
		}
		var r api.Report
		if err := transport.Unmarshal(env.Args, &r); err != nil {
			s.log.Warn("malformed LNM report", "lnm", ns.peer.LNM, "err", err)
			continue
		}
		s.c.HandleReport(ns.peer.LNM, g, r)
	}
}

func (s *Server) serveLNM(ctx context.Context, sess *transport.Session, p transport.Peer) {
	s.mu.Lock()
	s.live[p.LNM]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.live[p.LNM]--; s.live[p.LNM] <= 0 {
			delete(s.live, p.LNM)
		}
	}()
	ns := &nodeState{peer: p, attached: make(chan struct{}), hello: make(chan struct{})}
	sess.SetValue(ns)
	sess.SetMux(s.node)
	// An LNM must begin registering within the handshake timeout; how
	// long registration then takes depends on how many others are
	// registering (the LNM's own call deadline bounds it).
	t := time.AfterFunc(sess.Limits().HandshakeTimeout, func() {
		select {
		case <-ns.hello:
		default:
			s.log.Warn("LNM did not register in time", "lnm", p.LNM)
			sess.Close()
		}
	})
	defer t.Stop()
	sess.Serve(ctx)
	sess.Close()
	s.mu.Lock()
	if s.lnms[p.LNM] == sess {
		delete(s.lnms, p.LNM)
	}
	s.mu.Unlock()
	if g := ns.gen.Load(); g != 0 {
		s.c.DetachLNM(p.LNM, g, "connection closed")
	}
}

// Recover runs the controller's side of crash recovery: every LNM known
// from before is listed as recovering, is sent a recovery announcement
// naming self (the address LNMs should connect to), and gets grace to
// reconnect before it is declared failed. It returns when the grace period
// ends or ctx is done.
func (s *Server) Recover(ctx context.Context, tlsCfg *tls.Config, self string, grace time.Duration) {
	if s.opts.Known == nil {
		return
	}
	known := s.opts.Known.List()
	if len(known) == 0 {
		return
	}
	s.c.ExpectLNMs(known)
	s.log.Info("announcing recovery to known LNMs", "lnms", len(known), "grace", grace)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, n := range known {
		if n.Recovery == "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// Most LNMs retry the old address on their own and are back
			// before their turn comes: skip them (each announcement is a
			// TLS handshake, and a site has thousands).
			if s.reconnected(n.Name) {
				return
			}
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := transport.Announce(actx, n.Recovery, tlsCfg, transport.Announcement{Controller: self, ID: s.opts.ControllerID, Term: s.opts.Term}); err != nil {
				s.log.Info("recovery announcement not delivered; the LNM will retry on its own", "lnm", n.Name, "err", err)
			}
		}()
	}
	wg.Wait()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return
	}
	if failed := s.c.EndGrace(); len(failed) > 0 {
		s.log.Warn("LNMs did not return after the controller restart", "lnms", failed)
	}
}

// images lists the image store; metadata problems are shown to admins
// only (they name paths on the controller).
func (s *Server) images(ctx context.Context, id api.Identity, _ api.Empty) (api.ImagesReply, error) {
	list, errs := images.Store{Dir: s.opts.ImageDir}.List()
	rep := api.ImagesReply{Images: make([]api.Image, 0, len(list))}
	for _, im := range list {
		rep.Images = append(rep.Images, im.Info())
	}
	if id.Admin {
		for _, err := range errs {
			rep.Problems = append(rep.Problems, err.Error())
		}
	}
	return rep, nil
}

// keys manages the caller's SSH keys; an admin may name another user.
func (s *Server) keys(ctx context.Context, id api.Identity, a api.KeysArgs) (api.KeysReply, error) {
	if s.opts.Keys == nil {
		return api.KeysReply{}, api.Errorf(api.ErrUnavailable, "keys: this controller keeps no SSH keys")
	}
	user := id.User
	if a.User != "" && a.User != id.User {
		if !id.Admin {
			return api.KeysReply{}, api.Errorf(api.ErrForbidden, "keys: only admins manage another user's keys")
		}
		user = a.User
	}
	rep, err := s.opts.Keys.Serve(user, a)
	if err == nil && a.Action != api.KeysList {
		s.log.Info("SSH keys changed", "user", user, "by", id.User, "action", a.Action, "keys", len(rep.Keys))
	}
	return rep, err
}

// console relays a client's console stream to the VM's node (owner and
// admins, as the authorize chain allows), frame by frame, until either
// side ends.
func (s *Server) console(ctx context.Context, a api.ConsoleArgs, st *transport.Stream) error {
	defer st.Close()
	fail := func(err error) error {
		st.Send(api.ConsoleFrameError, api.AsError(err))
		return err
	}
	if err := a.Validate(); err != nil {
		return fail(err)
	}
	id := identity(ctx)
	vm, err := s.c.ConsoleTarget(ctx, id, a.VM, a.LogOnly)
	if err != nil {
		return fail(err)
	}
	s.mu.Lock()
	node := s.lnms[vm.LNM]
	s.mu.Unlock()
	if node == nil {
		return fail(api.Errorf(api.ErrUnavailable, "console of %s: its node %s is not connected", vm.Name, vm.LNM))
	}
	up, err := transport.OpenStream(ctx, node, api.LConsole, a)
	if err != nil {
		return fail(api.Errorf(api.ErrUnavailable, "console of %s: reaching node %s: %v", vm.Name, vm.LNM, err))
	}
	s.log.Info("console opened", "user", id.User, "vm", vm.Name, "lnm", vm.LNM, "log_only", a.LogOnly)
	err = transport.ConsoleRelay(ctx, st, up, transport.SessionFrom(ctx).Limits().KeepAlive)
	s.log.Info("console closed", "user", id.User, "vm", vm.Name, "err", err)
	return err
}

// tokens manages API tokens; an admin may list and revoke another user's.
// A request authenticated by a token (viaToken) cannot make tokens.
func (s *Server) tokens(ctx context.Context, id api.Identity, a api.TokensArgs, viaToken bool) (api.TokensReply, error) {
	if err := a.Validate(); err != nil {
		return api.TokensReply{}, err
	}
	if s.opts.Tokens == nil {
		return api.TokensReply{}, api.Errorf(api.ErrUnavailable, "tokens: this controller keeps no API tokens")
	}
	user := id.User
	if a.User != "" && a.User != id.User {
		if !id.Admin || a.Action == api.TokensCreate {
			return api.TokensReply{}, api.Errorf(api.ErrForbidden, "tokens: only admins list or revoke another user's tokens, and nobody makes them for another")
		}
		user = a.User
	}
	if viaToken && a.Action == api.TokensCreate {
		return api.TokensReply{}, api.Errorf(api.ErrForbidden, "tokens: a token cannot make tokens; log in with your password")
	}
	rep, err := s.opts.Tokens.Serve(id, user, a)
	if err == nil && a.Action != api.TokensList {
		s.log.Info("API tokens changed", "user", user, "by", id.User, "action", a.Action, "tokens", len(rep.Tokens))
	}
	return rep, err
}
