package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/usher-vm/usher/api"
)

// Limits bound what one peer can make a session do.
type Limits struct {
	HandshakeTimeout time.Duration // TLS handshake plus the first frame of a stream
	CallTimeout      time.Duration // default deadline of a call
	MaxCallTimeout   time.Duration // the most a caller may ask for
	MaxStreams       int           // concurrent inbound streams (and calls) per session
	MaxFrame         int           // largest frame accepted once the peer is authenticated
	// MaxFrameUnauth is the largest frame accepted, and UnauthStreams the
	// streams served at once, before the peer is authenticated (a client
	// before its login; a node is authenticated by its certificate).
	MaxFrameUnauth int
	UnauthStreams  int
	// FrameTimeout is how long the rest of a frame may take to arrive once
	// its header has: a peer cannot pin a half-sent frame.
	FrameTimeout time.Duration
	// MaxPartial bounds the bytes of frames a session is receiving and
	// has not received whole (what a peer can make it hold by sending
	// slowly or never finishing).
	MaxPartial   int64
	KeepAlive    time.Duration // keepalive interval
	PipeIdle     time.Duration // a call pipe unused this long is closed by its dialer (reopened by the next call)
	WriteTimeout time.Duration // every write's deadline
}

// DefaultLimits are safe defaults for every link.
func DefaultLimits() Limits {
	return Limits{
		HandshakeTimeout: 10 * time.Second,
		CallTimeout:      30 * time.Second,
		MaxCallTimeout:   30 * time.Minute,
		MaxStreams:       512,
		MaxFrame:         DefaultMaxFrame,
		MaxFrameUnauth:   64 << 10,
		UnauthStreams:    4,
		FrameTimeout:     30 * time.Second,
		MaxPartial:       2 * DefaultMaxFrame,
		KeepAlive:        5 * time.Second,
		PipeIdle:         30 * time.Second,
		WriteTimeout:     10 * time.Second,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	def := func(v *time.Duration, dv time.Duration) {
		if *v <= 0 {
			*v = dv
		}
	}
	def(&l.HandshakeTimeout, d.HandshakeTimeout)
	def(&l.CallTimeout, d.CallTimeout)
	def(&l.MaxCallTimeout, d.MaxCallTimeout)
	def(&l.FrameTimeout, d.FrameTimeout)
	def(&l.KeepAlive, d.KeepAlive)
	def(&l.PipeIdle, d.PipeIdle)
	def(&l.WriteTimeout, d.WriteTimeout)
	if l.MaxStreams <= 0 {
		l.MaxStreams = d.MaxStreams
	}
	if l.MaxFrame <= 0 {
		l.MaxFrame = d.MaxFrame
	}
	if l.MaxFrameUnauth <= 0 {
		l.MaxFrameUnauth = d.MaxFrameUnauth
	}
	if l.MaxFrameUnauth > l.MaxFrame {
		l.MaxFrameUnauth = l.MaxFrame
	}
	if l.UnauthStreams <= 0 {
		l.UnauthStreams = d.UnauthStreams
	}
	if l.MaxPartial <= 0 {
		l.MaxPartial = 2 * int64(l.MaxFrame)
	}
	return l
}

// yamuxConfig builds a fresh yamux configuration for one session (yamux
// configs must not be shared between sessions).
func yamuxConfig(l Limits, authed bool) *yamux.Config {
	c := yamux.DefaultConfig()
	// The accept queue is not the concurrency limit (MaxStreams is): keep
	// it small, yamux allocates it up front for every session. Before a
	// login, a peer gets only a few streams' worth of buffers.
	c.AcceptBacklog = min(l.MaxStreams, 128)
	if !authed {
		c.AcceptBacklog = min(c.AcceptBacklog, 4*l.UnauthStreams)
	}
	// Keepalive is the session's own (see Session.keepalive): yamux's
	// pings every interval from both sides whatever the traffic.
	c.EnableKeepAlive = false
	c.KeepAliveInterval = l.KeepAlive
	c.ConnectionWriteTimeout = l.WriteTimeout
	c.StreamOpenTimeout = l.WriteTimeout
	c.StreamCloseTimeout = l.WriteTimeout
	c.LogOutput = io.Discard
	return c
}

// Handler serves one call: it decodes args, acts, and returns a value to
// encode as the result, or an error (sent with its api code).
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// StreamHandler serves a long-lived stream. It owns the stream until it
// returns.
type StreamHandler func(ctx context.Context, args json.RawMessage, st *Stream) error

// Guard is the one access check of a mux: it runs before every handler
// with the method's declared access and refuses the call with an error
// (api.ErrUnauthorized, api.ErrForbidden) or lets it through.
type Guard func(ctx context.Context, s *Session, method string, access api.Access) error

type callEntry struct {
	access api.Access
	h      Handler
}

type streamEntry struct {
	access api.Access
	h      StreamHandler
}

// Mux maps method names to handlers. Build it before serving; it is
// read-only afterwards and may serve many sessions.
type Mux struct {
	calls   map[string]callEntry
	streams map[string]streamEntry
	guard   Guard
}

// NewMux returns an empty mux whose handlers all pass through guard
// (nil: no check).
func NewMux(guard Guard) *Mux {
	return &Mux{calls: map[string]callEntry{}, streams: map[string]streamEntry{}, guard: guard}
}

// Handle registers f for method d: the arguments are decoded into A, the
// reply encoded from R.
func Handle[A, R any](m *Mux, d api.Method[A, R], f func(ctx context.Context, a A) (R, error)) {
	if _, dup := m.calls[d.Name]; dup {
		panic("transport: method " + d.Name + " registered twice")
	}
	m.calls[d.Name] = callEntry{d.Access, func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a A
		if len(raw) > 0 {
			if err := Unmarshal(raw, &a); err != nil {
				return nil, api.Errorf(api.ErrBadRequest, "%s: malformed arguments: %v", d.Name, err)
			}
		}
		return f(ctx, a)
	}}
}

// HandleStream registers f for the stream d.
func HandleStream[A, M any](m *Mux, d api.Stream[A, M], f func(ctx context.Context, a A, st *Stream) error) {
	if _, dup := m.streams[d.Name]; dup {
		panic("transport: stream " + d.Name + " registered twice")
	}
	m.streams[d.Name] = streamEntry{d.Access, func(ctx context.Context, raw json.RawMessage, st *Stream) error {
		var a A
		if len(raw) > 0 {
			if err := Unmarshal(raw, &a); err != nil {
				err = api.Errorf(api.ErrBadRequest, "%s: malformed arguments: %v", d.Name, err)
				st.Send("error", api.AsError(err))
				return err
			}
		}
		return f(ctx, a, st)
	}}
}

// Call invokes method d on the session's peer and decodes its reply. The
// deadline is ctx's, or the session's CallTimeout.
func Call[A, R any](ctx context.Context, s *Session, d api.Method[A, R], a A) (R, error) {
	var r R
	err := s.call(ctx, d.Name, a, &r)
	return r, err
}

// OpenStream opens the long-lived stream d with arguments a; the peer's
// stream handler owns the other end.
func OpenStream[A, M any](ctx context.Context, s *Session, d api.Stream[A, M], a A) (*Stream, error) {
	st, err := s.open(ctx, d.Name, a)
	if err != nil {
		return nil, err
	}
	return &Stream{st: st, s: s}, nil
}

// request is the first frame of every stream.
type request struct {
	Method string          `json:"m"`
	Args   json.RawMessage `json:"a,omitempty"`
}

// Session is one TLS connection carrying a yamux session, on either side.
// Both sides may open streams; calls travel on one call pipe per direction
// (see pipe.go), long-lived streams carry pushed events and reports. The
// session owns the goroutines serving its streams: Wait returns when they
// have ended after Close.
type Session struct {
	ys     *yamux.Session
	conn   *coalescer
	limits Limits
	alive  *time.Timer   // keepalive: fires when nothing was read for a while
	quiet  time.Duration // how long without reading before a keepalive ping
	log    *slog.Logger
	sem    chan struct{} // inbound streams and calls in progress
	unauth chan struct{} // the same, before the peer is authenticated
	authed atomic.Bool
	onAuth func()    // the server's: the peer is no longer pending
	authMu sync.Once // onAuth runs once
	frames *Budget   // partial frames of this session (and of its server)
	value  atomic.Pointer[any]

	mu      sync.Mutex
	mux     *Mux
	closeFn []func()
	waiting bool // Wait was called
	once    sync.Once
	wg      sync.WaitGroup

	pmu  sync.Mutex // guards pipe
	pipe *pipe      // the call pipe, opened by the first call
}

// NewSession wraps an established connection. server says which yamux role
// this side plays (the dialer is the yamux client). authed says whether the
// peer is already authenticated (by its certificate, or because it is the
// server we dialled); otherwise the session holds it to the small
// unauthenticated limits until Authenticated is called. global, when not
// nil, bounds the partial frames of every session sharing it.
func NewSession(conn net.Conn, server, authed bool, l Limits, global *Budget, log *slog.Logger) (*Session, error) {
	l = l.withDefaults()
	cw := newCoalescer(conn, l.WriteTimeout)
	var ys *yamux.Session
	var err error
	if server {
		ys, err = yamux.Server(cw, yamuxConfig(l, authed))
	} else {
		ys, err = yamux.Client(cw, yamuxConfig(l, authed))
	}
	if err != nil {
		return nil, fmt.Errorf("starting yamux session: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Session{ys: ys, conn: cw, limits: l, log: log, sem: make(chan struct{}, l.MaxStreams),
		unauth: make(chan struct{}, l.UnauthStreams), quiet: l.KeepAlive,
		frames: &Budget{limit: l.MaxPartial, parent: global}}
	s.authed.Store(authed)
	if server {
		// The dialing side pings first: its pings keep this side quiet.
		s.quiet = l.KeepAlive * 3 / 2
	}
	s.alive = time.AfterFunc(time.Hour, s.keepalive)
	s.alive.Reset(s.quiet) // armed once the field is set
	return s, nil
}

// keepalive runs when nothing may have been read for a while (quiet: the
// keepalive interval on the dialing side, half as long again on the
// accepting side). If something was read, it waits for the rest; if not, it
// pings the peer and closes the session when no answer comes within the
// write timeout. So a busy session sends no pings at all, and an idle one
// one per interval, from the dialer: the accepting side hears it and stays
// quiet. A dead peer is still found within quiet plus the write timeout.
// (yamux's own keepalive pings from both sides every interval whatever the
// traffic, with a goroutine per session: on a site of 10,000 LNMs those
// pings took a tenth of a core.)
func (s *Session) keepalive() {
	if s.ys.IsClosed() {
		return
	}
	if idle := time.Since(s.conn.lastRead()); idle < s.quiet {
		s.alive.Reset(s.quiet - idle)
		return
	}
	if _, err := s.ys.Ping(); err != nil {
		if !s.ys.IsClosed() {
			s.log.Warn("peer did not answer a keepalive ping; closing the session", "remote", s.RemoteAddr().String(), "err", err)
			s.Close()
		}
		return
	}
	s.alive.Reset(s.quiet)
}

// Limits returns the session's limits.
func (s *Session) Limits() Limits { return s.limits }

// Authenticated lifts the unauthenticated limits (frame size, streams):
// the peer has logged in.
func (s *Session) Authenticated() {
	s.authed.Store(true)
	s.authMu.Do(func() {
		if s.onAuth != nil {
			s.onAuth()
		}
	})
}

// IsAuthenticated reports whether the peer has logged in (or needed not).
func (s *Session) IsAuthenticated() bool { return s.authed.Load() }

// maxFrame is the frame limit now.
func (s *Session) maxFrame() int {
	if s.authed.Load() {
		return s.limits.MaxFrame
	}
	return s.limits.MaxFrameUnauth
}

// SetValue attaches the server's per-session state (an identity, say).
func (s *Session) SetValue(v any) { s.value.Store(&v) }

// Value returns what SetValue attached (nil if nothing).
func (s *Session) Value() any {
	if p := s.value.Load(); p != nil {
		return *p
	}
	return nil
}

type sessionKey struct{}

// SessionFrom returns the session whose stream a handler serves.
func SessionFrom(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionKey{}).(*Session)
	return s
}

// LocalAddr is this side's address.
func (s *Session) LocalAddr() net.Addr { return s.ys.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.ys.RemoteAddr() }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// IsClosed reports whether the session ended.
func (s *Session) IsClosed() bool { return s.ys.IsClosed() }

// Close ends the session and every stream on it.
func (s *Session) Close() error {
	s.alive.Stop()
	err := s.ys.Close()
	s.once.Do(func() {
		s.mu.Lock()
		fns := s.closeFn
		s.mu.Unlock()
		for _, f := range fns {
			f()
		}
	})
	return err
}

// Wait returns once every goroutine serving the session's streams and its
// call pipe has ended (after Close, or when the peer went away).
func (s *Session) Wait() {
	s.mu.Lock()
	s.waiting = true // no goroutine starts after this (WaitGroup rules)
	s.mu.Unlock()
	s.wg.Wait()
}

// OnClose registers f to run once when Close is called.
func (s *Session) OnClose(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeFn = append(s.closeFn, f)
}

// SetMux sets the handlers for inbound streams (before Serve).
func (s *Session) SetMux(m *Mux) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mux = m
}

// goStream runs f in a goroutine the session owns; false (f not run)
// once the session is closed and its owner waits for its goroutines.
func (s *Session) goStream(f func()) bool {
	s.mu.Lock()
	if s.waiting {
		s.mu.Unlock()
		return false
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// admit takes a slot for one inbound stream or call: of MaxStreams, and
// before the peer is authenticated of UnauthStreams too. release gives it
// back.
func (s *Session) admit() (release func(), ok bool) {
	select {
	case s.sem <- struct{}{}:
	default:
		return nil, false
	}
	if s.authed.Load() {
		return func() { <-s.sem }, true
	}
	select {
	case s.unauth <- struct{}{}:
		return func() { <-s.unauth; <-s.sem }, true
	default:
		<-s.sem
		return nil, false
	}
}

// Serve accepts inbound streams until the session ends. Each stream runs in
// its own goroutine, within the session's stream limits; beyond them a
// stream is answered "too_many" and closed.
func (s *Session) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(context.WithValue(ctx, sessionKey{}, s))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.Close() }) // no goroutine per session
	defer stop()
	for {
		st, err := s.ys.AcceptStream()
		if err != nil {
			if s.ys.IsClosed() || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("accepting stream: %w", err)
		}
		release, ok := s.admit()
		if !ok {
			if !s.goStream(func() {
				st.SetDeadline(time.Now().Add(time.Second))
				WriteEnvelope(st, &Envelope{Error: &api.Error{Code: api.CodeTooMany, Msg: "too many concurrent streams"}})
				st.Close()
			}) {
				st.Close()
			}
			continue
		}
		if !s.goStream(func() {
			defer release()
			s.serveStream(ctx, st)
		}) {
			release()
			st.Close()
		}
	}
}

func (s *Session) serveStream(ctx context.Context, st *yamux.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(s.limits.HandshakeTimeout))
	b, err := s.readFrame(st)
	if err != nil {
		s.log.Debug("reading the first frame of a stream", "err", err)
		if errors.Is(err, ErrFrameTooLarge) {
			WriteEnvelope(st, &Envelope{Error: &api.Error{Code: api.CodeBadRequest, Msg: err.Error()}})
		}
		return
	}
	var req request
	if err := Unmarshal(b, &req); err != nil || req.Method == "" || len(req.Method) > 64 {
		WriteEnvelope(st, &Envelope{Error: &api.Error{Code: api.CodeBadRequest, Msg: "malformed stream request"}})
		return
	}
	s.mu.Lock()
	mux := s.mux
	s.mu.Unlock()
	if mux == nil {
		WriteEnvelope(st, &Envelope{Error: &api.Error{Code: api.CodeUnavailable, Msg: "no handlers"}})
		return
	}
	if req.Method == pipeMethod {
		s.servePipe(ctx, st, mux)
		return
	}
	e, ok := mux.streams[req.Method]
	if !ok {
		WriteEnvelope(st, &Envelope{Error: &api.Error{Code: api.CodeUnknown, Msg: fmt.Sprintf("unknown stream %q", req.Method)}})
		return
	}
	stream := &Stream{st: st, s: s}
	if mux.guard != nil {
		if err := mux.guard(ctx, s, req.Method, e.access); err != nil {
			stream.Send("error", api.AsError(err))
			return
		}
	}
	st.SetDeadline(time.Time{})
	defer s.recoverStream(req.Method)
	if err := e.h(ctx, req.Args, stream); err != nil {
		s.log.Debug("stream ended", "method", req.Method, "err", err)
	}
}

func (s *Session) recoverStream(method string) {
	if r := recover(); r != nil {
		s.log.Error("panic serving a stream; the stream is closed, the session goes on", "method", method, "panic", r, "stack", string(debug.Stack()))
	}
}

// readFrame reads one frame under the session's limits: its current frame
// size, the time the rest of a frame may take, and the partial-frame
// Budget.
func (s *Session) readFrame(st *yamux.Stream) ([]byte, error) {
	return readFrame(st, s.maxFrame(), s.frames, func() {
		st.SetReadDeadline(time.Now().Add(s.limits.FrameTimeout))
	})
}

// methodEnvelope is the JSON envelope {m: method, a: args} of encoded args.
func methodEnvelope(method string, args []byte) []byte {
	m, _ := Marshal(method)
	b := make([]byte, 0, len(m)+len(args)+12)
	b = append(b, `{"m":`...)
	b = append(b, m...)
	if len(args) > 0 {
		b = append(b, `,"a":`...)
		b = append(b, args...)
	}
	return append(b, '}')
}

// call sends method(args) on the call pipe and decodes the reply.
func (s *Session) call(ctx context.Context, method string, args, reply any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(s.limits.CallTimeout)
	}
	var body []byte
	for attempt := 0; ; attempt++ {
		p, err := s.getPipe(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if body == nil {
			if body, err = Marshal(args); err != nil {
				return fmt.Errorf("%s: encoding args: %w", method, err)
			}
		}
		err = p.call(ctx, method, body, deadline, reply)
		if err != errPipeIdle || attempt >= 3 {
			return err
		}
		// The pipe closed for idleness just before this call: nothing
		// was sent, so open a new one.
	}
}

func (s *Session) open(ctx context.Context, method string, args any) (*yamux.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if args != nil {
		b, err := Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("%s: encoding args: %w", method, err)
		}
		raw = b
	}
	rb, err := Marshal(request{Method: method, Args: raw})
	if err != nil {
		return nil, err
	}
	st, err := s.ys.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%s: opening stream: %w", method, err)
	}
	st.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
	if err := WriteFrame(st, rb); err != nil {
		st.Close()
		return nil, fmt.Errorf("%s: sending call: %w", method, err)
	}
	st.SetWriteDeadline(time.Time{})
	return st, nil
}

// Stream is a long-lived stream. One goroutine may Send and one may Recv.
// Every Send carries a write deadline; a failed write closes the stream (a
// peer that stops reading is cut off rather than left to stall us).
type Stream struct {
	st      *yamux.Stream
	s       *Session
	aborted atomic.Bool
}

// Send writes one message with a write deadline.
func (t *Stream) Send(method string, v any) error {
	b, err := Marshal(v)
	if err != nil {
		return err
	}
	t.st.SetWriteDeadline(time.Now().Add(t.s.limits.WriteTimeout))
	if _, err := t.st.Write(appendFrame(nil, methodEnvelope(method, b))); err != nil {
		t.st.Close()
		return err
	}
	return nil
}

// Recv reads one message, waiting at most timeout for it to begin (0: no
// deadline); once begun, the rest must come within the frame timeout.
func (t *Stream) Recv(timeout time.Duration) (*Envelope, error) {
	if timeout > 0 {
		t.st.SetReadDeadline(time.Now().Add(timeout))
	} else {
		t.st.SetReadDeadline(time.Time{})
	}
	if t.aborted.Load() { // after setting ours: see Abort
		t.st.SetReadDeadline(time.Unix(1, 0))
	}
	b, err := t.s.readFrame(t.st)
	shrink(t.st)
	if err != nil {
		return nil, err
	}
	return DecodeEnvelope(b)
}

// shrink is called after each frame read from a long-lived stream. A yamux
// stream keeps its receive buffer at the size of the largest burst it ever
// received (a node's usage report of 30 KB, a start batch); the call pipes
// and event streams, several per LNM on sites of thousands, would keep tens
// of KiB each. Shrink drops the buffer when it is drained, and the next
// frame gets one sized to fit it. Under load frames queue up, the buffer is
// seldom empty and nothing changes.
func shrink(st *yamux.Stream) { st.Shrink() }

// Close closes the stream (our side: the peer reads EOF; a Recv in
// progress here still waits for the peer).
func (t *Stream) Close() error { return t.st.Close() }

// Abort closes the stream and makes a Recv in progress, and every later
// one, fail at once: for a stream whose reader another goroutine must
// stop.
func (t *Stream) Abort() {
	t.aborted.Store(true)
	t.st.SetReadDeadline(time.Unix(1, 0))
	t.st.Close()
}
