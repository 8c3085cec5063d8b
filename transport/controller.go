package transport

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/core"
)

// PolicyAdmin serves the admin-only policy calls (status, register,
// unregister). The Lua host provides it.
type PolicyAdmin func(ctx context.Context, id core.Identity, a core.PolicyArgs) (any, error)

// ControllerOptions configure the controller's network endpoint.
type ControllerOptions struct {
	Server         ServerOptions
	ReportInterval time.Duration // how often LNMs report usage
	AuthFailures   int           // failed logins before a session is cut
	Policy         PolicyAdmin
	ControllerID   string
	Known          *KnownLNMs // persisted list of LNMs (nil: none)
	// MaxRegistering bounds LNM registrations (lnm_hello: node info,
	// status, the list of its VMs, adoption) in progress at once; more
	// wait their turn. After a controller restart every LNM of the site
	// registers at the same moment. Default 64.
	MaxRegistering int
}

// ControllerServer serves the controller's remote APIs: the client API of
// Table 4 to authenticated users, and the LNM link (the controller's side of
// Table 2) to peers holding an LNM certificate.
type ControllerServer struct {
	c    *core.Controller
	opts ControllerOptions
	srv  *Server
	log  *slog.Logger

	mu     sync.Mutex
	lnms   map[string]*Session // registered sessions by node
	live   map[string]int      // open LNM sessions by node, registered or not
	regSem chan struct{}       // registrations in progress
}

// NewControllerServer builds the endpoint for c.
func NewControllerServer(c *core.Controller, tlsCfg *tls.Config, opts ControllerOptions) *ControllerServer {
	if opts.ReportInterval <= 0 {
		opts.ReportInterval = 5 * time.Second
	}
	if opts.AuthFailures <= 0 {
		opts.AuthFailures = 3
	}
	log := opts.Server.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxRegistering <= 0 {
		opts.MaxRegistering = 64
	}
	cs := &ControllerServer{c: c, opts: opts, log: log, lnms: map[string]*Session{}, live: map[string]int{}, regSem: make(chan struct{}, opts.MaxRegistering)}
	cs.srv = NewServer(tlsCfg, opts.Server, cs.onSession)
	return cs
}

// reconnected reports whether LNM name is back: it holds a session,
// registered or registering (possibly waiting its turn).
func (cs *ControllerServer) reconnected(name string) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.live[name] > 0
}

// Serve accepts connections on ln until ctx ends.
func (cs *ControllerServer) Serve(ctx context.Context, ln net.Listener) error {
	return cs.srv.Serve(ctx, ln)
}

func (cs *ControllerServer) onSession(ctx context.Context, s *Session, p Peer) {
	if p.LNM != "" {
		cs.serveLNM(ctx, s, p)
		return
	}
	cs.serveClient(ctx, s, p)
}

// wireErr maps core errors to wire codes.
func wireErr(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var rej *core.RejectError
	switch {
	case errors.As(err, &rej):
		return Errorf(CodeRejected, "%s", err.Error())
	case errors.Is(err, core.ErrAuthFailed):
		return Errorf(CodeUnauthorized, "%s", err.Error())
	case errors.Is(err, core.ErrBadRequest):
		return Errorf(CodeBadRequest, "%s", err.Error())
	case errors.Is(err, core.ErrNotFound):
		return Errorf(CodeNotFound, "%s", err.Error())
	case errors.Is(err, core.ErrForbidden):
		return Errorf(CodeForbidden, "%s", err.Error())
	case errors.Is(err, core.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return Errorf(CodeUnavailable, "%s", err.Error())
	}
	return Errorf(CodeInternal, "%s", err.Error())
}

func decode(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := Unmarshal(raw, v); err != nil {
		return Errorf(CodeBadRequest, "malformed arguments: %v", err)
	}
	return nil
}

// call wraps a typed handler.
func call[A any](f func(ctx context.Context, a A) (any, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a A
		if err := decode(raw, &a); err != nil {
			return nil, err
		}
		res, err := f(ctx, a)
		return res, wireErr(err)
	}
}

// ---------------------------------------------------------------------------
// clients

func (cs *ControllerServer) serveClient(ctx context.Context, s *Session, p Peer) {
	var ident atomic.Pointer[core.Identity]
	var failures atomic.Int32
	authed := make(chan struct{})
	var authOnce sync.Once
	need := func() (core.Identity, error) {
		id := ident.Load()
		if id == nil {
			return core.Identity{}, Errorf(CodeUnauthorized, "authenticate first")
		}
		return *id, nil
	}
	mux := NewMux()
	mux.Handle(core.MAuth, call(func(ctx context.Context, a core.AuthArgs) (any, error) {
		if ident.Load() != nil {
			return nil, Errorf(CodeBadRequest, "session already authenticated")
		}
		id, err := cs.c.Authenticate(ctx, core.Credentials{User: a.User, Password: a.Password, Remote: p.Remote})
		if err != nil {
			if failures.Add(1) >= int32(cs.opts.AuthFailures) {
				cs.log.Warn("closing session after repeated authentication failures", "remote", p.Remote)
				time.AfterFunc(100*time.Millisecond, func() { s.Close() })
			}
			return nil, err
		}
		ident.Store(&id)
		authOnce.Do(func() { close(authed) })
		cs.log.Info("user connected", "user", id.User, "remote", p.Remote)
		return core.AuthReply{Identity: id, Domain: cs.c.Domain()}, nil
	}))
	mux.Handle(core.MWhoami, call(func(ctx context.Context, _ struct{}) (any, error) {
		return need()
	}))
	mux.Handle(core.MList, call(func(ctx context.Context, a core.ListArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.List(ctx, id, a)
	}))
	mux.Handle(core.MListLNMs, call(func(ctx context.Context, a core.ListLNMsArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.ListLNMs(ctx, id, a)
	}))
	mux.Handle(core.MClusters, call(func(ctx context.Context, a struct {
		All bool `json:"all"`
	}) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return core.ClustersReply{Clusters: cs.c.Clusters(id, a.All)}, nil
	}))
	mux.Handle(core.MStart, call(func(ctx context.Context, a core.StartArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.Start(ctx, id, a)
	}))
	mux.Handle(core.MOpOn, call(func(ctx context.Context, a core.OpArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.OpOn(ctx, id, a)
	}))
	mux.Handle(core.MMigrate, call(func(ctx context.Context, a core.MigrateArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.Migrate(ctx, id, a)
	}))
	mux.Handle(core.MPlan, call(func(ctx context.Context, a core.PlanArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		return cs.c.Plan(ctx, id, a)
	}))
	mux.Handle(core.MStatus, call(func(ctx context.Context, _ struct{}) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		if !id.Admin {
			return nil, Errorf(CodeForbidden, "status needs an admin")
		}
		return cs.c.State().Counts(), nil
	}))
	mux.Handle(core.MPolicy, call(func(ctx context.Context, a core.PolicyArgs) (any, error) {
		id, err := need()
		if err != nil {
			return nil, err
		}
		if !id.Admin {
			return nil, Errorf(CodeForbidden, "policy administration needs an admin")
		}
		if cs.opts.Policy == nil {
			return nil, Errorf(CodeUnavailable, "no policy host")
		}
		return cs.opts.Policy(ctx, id, a)
	}))
	mux.HandleStream(core.MEvents, func(ctx context.Context, raw json.RawMessage, st *Stream) error {
		defer st.Close()
		id, err := need()
		if err != nil {
			st.Send("error", AsError(err))
			return err
		}
		var a struct {
			core.EventsArgs
			Cluster string `json:"cluster"`
		}
		if err := decode(raw, &a); err != nil {
			st.Send("error", err)
			return err
		}
		sub, err := cs.c.Subscribe(id, a.Cluster, a.Watch)
		if err != nil {
			st.Send("error", AsError(wireErr(err)))
			return err
		}
		defer cs.c.Unsubscribe(sub)
		beat := time.NewTicker(s.Limits().KeepAlive)
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
			case <-s.Done():
				return nil
			case <-ctx.Done():
				return nil
			}
		}
	})
	s.SetMux(mux)
	// A session that does not authenticate in time is cut off.
	go func() {
		t := time.NewTimer(s.Limits().HandshakeTimeout)
		defer t.Stop()
		select {
		case <-authed:
		case <-t.C:
			cs.log.Info("closing unauthenticated session", "remote", p.Remote)
			s.Close()
		case <-s.Done():
		}
	}()
	s.Serve(ctx)
}

// ---------------------------------------------------------------------------
// LNMs

type lnmLink struct{ s *Session }

func (l *lnmLink) Start(ctx context.Context, a core.LNMStartArgs) (r core.LNMResults, err error) {
	err = l.s.Call(ctx, core.LStart, a, &r)
	return
}
func (l *lnmLink) OpOn(ctx context.Context, a core.LNMOpArgs) (r core.LNMResults, err error) {
	err = l.s.Call(ctx, core.LOpOn, a, &r)
	return
}
func (l *lnmLink) Migrate(ctx context.Context, a core.LNMMigrateArgs) (r core.LNMResults, err error) {
	err = l.s.Call(ctx, core.LMigrate, a, &r)
	return
}
func (l *lnmLink) Prepare(ctx context.Context, a core.LNMStartArgs) (r core.LNMResults, err error) {
	err = l.s.Call(ctx, core.LPrepare, a, &r)
	return
}
func (l *lnmLink) Receive(ctx context.Context, a core.ReceiveArgs) error {
	return l.s.Call(ctx, core.LReceive, a, nil)
}
func (l *lnmLink) Details(ctx context.Context, a core.NamesArgs) (r core.DetailsReply, err error) {
	err = l.s.Call(ctx, core.LGetDetails, a, &r)
	return
}

func (cs *ControllerServer) serveLNM(ctx context.Context, s *Session, p Peer) {
	cs.mu.Lock()
	cs.live[p.LNM]++
	cs.mu.Unlock()
	defer func() {
		cs.mu.Lock()
		if cs.live[p.LNM]--; cs.live[p.LNM] <= 0 {
			delete(cs.live, p.LNM)
		}
		cs.mu.Unlock()
	}()
	var gen atomic.Uint64
	attached := make(chan struct{})
	var once sync.Once
	hello := make(chan struct{})
	var helloOnce sync.Once
	mux := NewMux()
	mux.Handle(core.MLNMHello, call(func(ctx context.Context, a core.LNMHello) (any, error) {
		helloOnce.Do(func() { close(hello) })
		// Admission: a herd of LNMs reconnecting after a controller
		// restart registers in turn instead of all at once (where each
		// would take long enough to time out, reconnect and start over).
		select {
		case cs.regSem <- struct{}{}:
			defer func() { <-cs.regSem }()
		case <-ctx.Done():
			return nil, Errorf(CodeUnavailable, "controller busy registering other LNMs: %v", ctx.Err())
		case <-s.Done():
			return nil, Errorf(CodeUnavailable, "session closed while waiting to register")
		}
		if a.Node.Name != p.LNM {
			cs.log.Warn("LNM certificate names another node", "cert", p.LNM, "claimed", a.Node.Name, "remote", p.Remote)
			time.AfterFunc(100*time.Millisecond, func() { s.Close() })
			return nil, Errorf(CodeForbidden, "certificate is for node %q, not %q", p.LNM, a.Node.Name)
		}
		if gen.Load() != 0 {
			return nil, Errorf(CodeBadRequest, "already registered")
		}
		if a.Status == nil {
			// An LNM of an earlier release: ask, as the controller did then.
			var st core.NodeStatus
			if err := s.Call(ctx, core.LGetNodeStatus, nil, &st); err != nil {
				return nil, Errorf(CodeUnavailable, "get_node_status: %v", err)
			}
			a.Status = &st
		}
		// The newest session of a node wins; the old one is closed.
		cs.mu.Lock()
		old := cs.lnms[p.LNM]
		cs.lnms[p.LNM] = s
		cs.mu.Unlock()
		if old != nil && old != s {
			old.Close()
		}
		info := a.Node
		var vms core.ListVMsReply
		if err := s.Call(ctx, core.LListVMs, nil, &vms); err != nil {
			return nil, Errorf(CodeUnavailable, "list_vms: %v", err)
		}
		// Durable before visible: once an LNM is listed as connected, a
		// controller crash will still announce itself to it.
		if cs.opts.Known != nil {
			if err := cs.opts.Known.Record(info); err != nil {
				cs.log.Error("persisting known LNMs", "err", err)
			}
		}
		g, err := cs.c.AttachLNM(ctx, info, a.Status, &lnmLink{s: s}, vms.Domains)
		if err != nil {
			return nil, err
		}
		gen.Store(g)
		once.Do(func() { close(attached) })
		return core.LNMHelloReply{Domain: cs.c.Domain(), ReportInterval: cs.opts.ReportInterval.Milliseconds(), ControllerID: cs.opts.ControllerID}, nil
	}))
	mux.HandleStream(core.MLNMEvents, func(ctx context.Context, raw json.RawMessage, st *Stream) error {
		defer st.Close()
		select {
		case <-attached:
		case <-s.Done():
			return nil
		}
		g := gen.Load()
		// Reports come every interval and heartbeats in between; silence
		// longer than this means the LNM or the network is gone.
		bound := 3*cs.opts.ReportInterval + s.Limits().KeepAlive
		for {
			env, err := st.Recv(bound)
			if err != nil {
				cs.log.Warn("LNM event stream ended", "lnm", p.LNM, "err", err)
				s.Close()
				return err
			}
			if env.Method == "beat" {
				continue
			}
			var r core.LNMReport
			if err := Unmarshal(env.Args, &r); err != nil {
				cs.log.Warn("malformed LNM report", "lnm", p.LNM, "err", err)
				continue
			}
			cs.c.HandleReport(p.LNM, g, r)
		}
	})
	s.SetMux(mux)
	go func() {
		// An LNM must begin registering within the handshake timeout;
		// how long registration then takes depends on how many others are
		// registering (the LNM's own call deadline bounds it).
		t := time.NewTimer(s.Limits().HandshakeTimeout)
		defer t.Stop()
		select {
		case <-hello:
		case <-attached:
		case <-t.C:
			cs.log.Warn("LNM did not register in time", "lnm", p.LNM)
			s.Close()
		case <-s.Done():
		}
	}()
	s.Serve(ctx)
	s.Close()
	cs.mu.Lock()
	if cs.lnms[p.LNM] == s {
		delete(cs.lnms, p.LNM)
	}
	cs.mu.Unlock()
	if g := gen.Load(); g != 0 {
		cs.c.DetachLNM(p.LNM, g, "connection closed")
	}
}

// Recover runs the controller's side of crash recovery: every LNM known
// from before is listed as recovering, is sent a recovery announcement
// naming self (the address LNMs should connect to), and gets grace to
// reconnect before it is declared failed. It returns when the grace period
// ends or ctx is done.
func (cs *ControllerServer) Recover(ctx context.Context, tlsCfg *tls.Config, self string, grace time.Duration) {
	if cs.opts.Known == nil {
		return
	}
	known := cs.opts.Known.List()
	if len(known) == 0 {
		return
	}
	cs.c.ExpectLNMs(known)
	cs.log.Info("announcing recovery to known LNMs", "lnms", len(known), "grace", grace)
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
			if cs.reconnected(n.Name) {
				return
			}
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := Announce(actx, n.Recovery, tlsCfg, Announcement{Controller: self, ID: cs.opts.ControllerID}); err != nil {
				cs.log.Info("recovery announcement not delivered; the LNM will retry on its own", "lnm", n.Name, "err", err)
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
	if failed := cs.c.EndGrace(); len(failed) > 0 {
		cs.log.Warn("LNMs did not return after the controller restart", "lnms", failed)
	}
}
