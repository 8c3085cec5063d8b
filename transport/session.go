package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Limits bound what one peer can make a session do.
type Limits struct {
	HandshakeTimeout time.Duration // TLS handshake plus first call
	CallTimeout      time.Duration // default deadline of a call stream
	MaxCallTimeout   time.Duration // the most a caller may ask for
	MaxStreams       int           // concurrent inbound streams per session
	MaxFrame         int           // largest frame accepted
	KeepAlive        time.Duration // yamux keepalive interval
	PipeIdle         time.Duration // a call pipe unused this long is closed (reopened by the next call)
	WriteTimeout     time.Duration // yamux connection write timeout
}

// DefaultLimits are safe defaults for every link.
func DefaultLimits() Limits {
	return Limits{
		HandshakeTimeout: 10 * time.Second,
		CallTimeout:      30 * time.Second,
		MaxCallTimeout:   30 * time.Minute,
		MaxStreams:       512,
		MaxFrame:         DefaultMaxFrame,
		KeepAlive:        5 * time.Second,
		PipeIdle:         30 * time.Second,
		WriteTimeout:     10 * time.Second,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = d.HandshakeTimeout
	}
	if l.CallTimeout <= 0 {
		l.CallTimeout = d.CallTimeout
	}
	if l.MaxCallTimeout <= 0 {
		l.MaxCallTimeout = d.MaxCallTimeout
	}
	if l.MaxStreams <= 0 {
		l.MaxStreams = d.MaxStreams
	}
	if l.MaxFrame <= 0 {
		l.MaxFrame = d.MaxFrame
	}
	if l.KeepAlive <= 0 {
		l.KeepAlive = d.KeepAlive
	}
	if l.PipeIdle <= 0 {
		l.PipeIdle = d.PipeIdle
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	return l
}

// yamuxConfig builds a fresh yamux configuration for one session (yamux
// configs must not be shared between sessions).
func yamuxConfig(l Limits) *yamux.Config {
	c := yamux.DefaultConfig()
	// The accept queue is not the concurrency limit (MaxStreams is): keep
	// it small, yamux allocates it up front for every session.
	c.AcceptBacklog = min(l.MaxStreams, 128)
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
// encode as the result, or an error (an *Error keeps its code).
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// StreamHandler serves a long-lived stream (pushed events). It owns the
// stream until it returns.
type StreamHandler func(ctx context.Context, args json.RawMessage, st *Stream) error

// Mux maps method names to handlers. Build it before serving; it is read-only
// afterwards.
type Mux struct {
	calls   map[string]Handler
	streams map[string]StreamHandler
}

// NewMux returns an empty mux.
func NewMux() *Mux {
	return &Mux{calls: map[string]Handler{}, streams: map[string]StreamHandler{}}
}

// Handle registers a call handler.
func (m *Mux) Handle(method string, h Handler) { m.calls[method] = h }

// HandleStream registers a long-lived stream handler.
func (m *Mux) HandleStream(method string, h StreamHandler) { m.streams[method] = h }

// request is the first frame of every stream.
type request struct {
	Method    string          `json:"m"`
	Args      json.RawMessage `json:"a,omitempty"`
	TimeoutMS int64           `json:"t,omitempty"`
}

// Session is one TLS connection carrying a yamux session, on either side.
// Both sides may open streams: one stream per call, plus long-lived streams
// for pushed events.
type Session struct {
	ys     *yamux.Session
	conn   *coalescer
	limits Limits
	alive  *time.Timer   // keepalive: fires when nothing was read for a while
	quiet  time.Duration // how long without reading before a keepalive ping
	log    *slog.Logger
	sem    chan struct{}

	mu      sync.Mutex
	mux     *Mux
	closeFn []func()
	once    sync.Once

	pmu    sync.Mutex // guards pipe and noPipe
	pipe   *pipe      // the call pipe, opened by the first call
	noPipe bool       // the peer has no pipe: one stream per call
	// refusePipe makes this side answer pipe requests as an older peer
	// would (unknown method): tests of the fallback set it.
	refusePipe bool
}

// NewSession wraps an established connection. server says which yamux role
// this side plays (the dialer is the yamux client).
func NewSession(conn net.Conn, server bool, l Limits, log *slog.Logger) (*Session, error) {
	l = l.withDefaults()
	cw := newCoalescer(conn, l.WriteTimeout)
	var ys *yamux.Session
	var err error
	if server {
		ys, err = yamux.Server(cw, yamuxConfig(l))
	} else {
		ys, err = yamux.Client(cw, yamuxConfig(l))
	}
	if err != nil {
		return nil, fmt.Errorf("starting yamux session: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Session{ys: ys, conn: cw, limits: l, log: log, sem: make(chan struct{}, l.MaxStreams), quiet: l.KeepAlive}
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
// pings took a tenth of a core.) Peers of older versions keep pinging on
// their own schedule; this side answers them as before.
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

// OnClose registers f to run once when Close is called.
func (s *Session) OnClose(f func()) {
	s.mu.Lock()
	s.closeFn = append(s.closeFn, f)
	s.mu.Unlock()
}

// SetMux sets the handlers for inbound streams (before Serve).
func (s *Session) SetMux(m *Mux) {
	s.mu.Lock()
	s.mux = m
	s.mu.Unlock()
}

// Serve accepts inbound streams until the session ends. Each stream runs in
// its own goroutine, at most MaxStreams at once; beyond that a stream is
// answered "too_many" and closed.
func (s *Session) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
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
		select {
		case s.sem <- struct{}{}:
			go func() {
				defer func() { <-s.sem }()
				s.serveStream(ctx, st)
			}()
		default:
			go func() {
				st.SetDeadline(time.Now().Add(time.Second))
				WriteEnvelope(st, &Envelope{Error: Errorf(CodeTooMany, "more than %d concurrent streams", s.limits.MaxStreams)})
				st.Close()
			}()
		}
	}
}

func (s *Session) serveStream(ctx context.Context, st *yamux.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(s.limits.HandshakeTimeout))
	b, err := ReadFrame(st, s.limits.MaxFrame)
	if err != nil {
		s.log.Debug("reading call", "err", err)
		if errors.Is(err, ErrFrameTooLarge) {
			WriteEnvelope(st, &Envelope{Error: Errorf(CodeBadRequest, "%v", err)})
		}
		return
	}
	var req request
	if err := Unmarshal(b, &req); err != nil || req.Method == "" || len(req.Method) > 64 {
		WriteEnvelope(st, &Envelope{Error: Errorf(CodeBadRequest, "malformed call")})
		return
	}
	s.mu.Lock()
	mux := s.mux
	s.mu.Unlock()
	if mux == nil {
		WriteEnvelope(st, &Envelope{Error: Errorf(CodeUnavailable, "no handlers")})
		return
	}
	if req.Method == pipeMethod && !s.refusePipe {
		s.servePipe(ctx, st, mux)
		return
	}
	if sh, ok := mux.streams[req.Method]; ok {
		st.SetDeadline(time.Time{})
		stream := &Stream{st: st, s: s}
		if err := sh(ctx, req.Args, stream); err != nil {
			s.log.Debug("stream ended", "method", req.Method, "err", err)
		}
		return
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = s.limits.CallTimeout
	}
	st.SetDeadline(time.Now().Add(min(timeout, s.limits.MaxCallTimeout) + s.limits.WriteTimeout))
	failed, body := s.handle(ctx, mux, req.Method, req.Args, timeout)
	st.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
	if _, err := st.Write(appendFrame(nil, envelopeBytes(failed, body))); err != nil {
		s.log.Debug("writing reply", "method", req.Method, "err", err)
	}
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

// envelopeBytes is the JSON envelope of an encoded result or error, built
// without re-encoding (and so re-validating) the body.
func envelopeBytes(failed bool, body []byte) []byte {
	key := `{"r":`
	if failed {
		key = `{"e":`
	}
	b := make([]byte, 0, len(key)+len(body)+1)
	b = append(b, key...)
	b = append(b, body...)
	return append(b, '}')
}

func safeCall(ctx context.Context, h Handler, args json.RawMessage) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Errorf(CodeInternal, "handler panic: %v", r)
		}
	}()
	return h(ctx, args)
}

// AsError converts any error into a wire error, keeping an *Error's code.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Errorf(CodeUnavailable, "%v", err)
	}
	return Errorf(CodeInternal, "%v", err)
}

// Call opens a stream, sends method(args), waits for the reply and decodes
// it into reply (which may be nil). The stream's deadline is ctx's deadline,
// or CallTimeout.
func (s *Session) Call(ctx context.Context, method string, args, reply any) error {
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
		if errors.Is(err, errPipeUnsupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if body == nil && args != nil {
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
	st, err := s.open(ctx, method, args, time.Until(deadline))
	if err != nil {
		return err
	}
	defer st.Close()
	st.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	env, err := ReadEnvelope(st, s.limits.MaxFrame)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, ctx.Err())
		}
		return fmt.Errorf("%s: reading reply: %w", method, err)
	}
	if env.Error != nil {
		return env.Error
	}
	if reply != nil && env.Result != nil {
		if err := Unmarshal(env.Result, reply); err != nil {
			return fmt.Errorf("%s: decoding reply: %w", method, err)
		}
	}
	return nil
}

func (s *Session) open(ctx context.Context, method string, args any, timeout time.Duration) (*yamux.Stream, error) {
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
	rb, err := Marshal(request{Method: method, Args: raw, TimeoutMS: timeout.Milliseconds()})
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

// OpenStream opens a long-lived stream for method(args); the peer's
// StreamHandler owns the other end.
func (s *Session) OpenStream(ctx context.Context, method string, args any) (*Stream, error) {
	st, err := s.open(ctx, method, args, 0)
	if err != nil {
		return nil, err
	}
	return &Stream{st: st, s: s}, nil
}

// Stream is a long-lived stream. One goroutine may Send and one may Recv.
// Every Send carries a write deadline; a failed write closes the stream (a
// peer that stops reading is cut off rather than left to stall us).
type Stream struct {
	st *yamux.Stream
	s  *Session
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

// Recv reads one message, waiting at most timeout (0: no deadline).
func (t *Stream) Recv(timeout time.Duration) (*Envelope, error) {
	if timeout > 0 {
		t.st.SetReadDeadline(time.Now().Add(timeout))
	} else {
		t.st.SetReadDeadline(time.Time{})
	}
	env, err := ReadEnvelope(t.st, t.s.limits.MaxFrame) // unbuffered: yamux buffers
	shrink(t.st)
	return env, err
}

// shrink is called after each frame read from a long-lived stream. A yamux
// stream keeps its receive buffer at the size of the largest burst it ever
// received (a node's usage report of 30 KB, a start batch); the call pipes
// and event streams, several per LNM on sites of thousands, would keep tens
// of KiB each. Shrink drops the buffer when it is drained, and the next
// frame gets one sized to fit it. Under load frames queue up, the buffer is
// seldom empty and nothing changes.
func shrink(st *yamux.Stream) { st.Shrink() }

// Close closes the stream.
func (t *Stream) Close() error { return t.st.Close() }
