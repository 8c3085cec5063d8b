package transport

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/hashicorp/yamux"
)

// The call pipe: one long-lived stream per session that carries many calls,
// each tagged with an id, so a call costs one frame each way instead of a
// stream's open, data, acknowledgement and two closes. The dialer of the
// pipe writes requests and one goroutine reads the replies; the other side
// reads requests in one goroutine and writes replies under a mutex (one
// reader and one writer per stream at any moment). A call still has its own
// deadline (the caller stops waiting; the handler's context ends), every
// write has a write deadline, and a failed write closes the pipe: its
// pending calls fail and the next call opens a new pipe. A peer that does
// refuses the pipe fails the call.
//
// Frames (inside the usual 4-byte length prefix):
//
//	request: id uint64 | timeout ms uint32 | method length uint8 | method | JSON args
//	reply:   id uint64 | status uint8 (0 result, 1 error) | JSON result or Error
const (
	pipeMethod = "_pipe"
	pipeHello  = "usher-pipe/1"
	reqHead    = 8 + 4 + 1
	replyHead  = 8 + 1
)

var errPipeIdle = errors.New("call pipe closed while idle")

// appendRequest appends a framed pipe request to b.
func appendRequest(b []byte, id uint64, timeout time.Duration, method string, args []byte) []byte {
	n := reqHead + len(method) + len(args)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = binary.BigEndian.AppendUint64(b, id)
	// Rounded up: the handler's deadline must not come before the caller's.
	ms := (timeout + time.Millisecond - 1).Milliseconds()
	if ms < 0 {
		ms = 0
	}
	if ms > 0xFFFFFFFF {
		ms = 0xFFFFFFFF
	}
	b = binary.BigEndian.AppendUint32(b, uint32(ms))
	b = append(b, byte(len(method)))
	b = append(b, method...)
	return append(b, args...)
}

// pipeRequest is one decoded request frame.
type pipeRequest struct {
	ID      uint64
	Timeout time.Duration
	Method  string
	Args    json.RawMessage
}

// decodeRequest parses a request frame's payload.
func decodeRequest(b []byte) (pipeRequest, error) {
	var r pipeRequest
	if len(b) < reqHead {
		return r, fmt.Errorf("malformed call: %d-byte frame is shorter than the %d-byte header", len(b), reqHead)
	}
	r.ID = binary.BigEndian.Uint64(b)
	r.Timeout = time.Duration(binary.BigEndian.Uint32(b[8:])) * time.Millisecond
	ml := int(b[12])
	if ml == 0 || ml > 64 || len(b) < reqHead+ml {
		return r, fmt.Errorf("malformed call %d: bad method length %d", r.ID, ml)
	}
	r.Method = string(b[reqHead : reqHead+ml])
	if rest := b[reqHead+ml:]; len(rest) > 0 {
		r.Args = rest
	}
	return r, nil
}

// appendReply appends a framed pipe reply to b.
func appendReply(b []byte, id uint64, failed bool, body []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(replyHead+len(body)))
	b = binary.BigEndian.AppendUint64(b, id)
	st := byte(0)
	if failed {
		st = 1
	}
	b = append(b, st)
	return append(b, body...)
}

// pipeReply is one decoded reply frame.
type pipeReply struct {
	ID     uint64
	Failed bool
	Body   []byte
}

// decodeReply parses a reply frame's payload.
func decodeReply(b []byte) (pipeReply, error) {
	if len(b) < replyHead {
		return pipeReply{}, fmt.Errorf("malformed reply: %d-byte frame is shorter than the %d-byte header", len(b), replyHead)
	}
	r := pipeReply{ID: binary.BigEndian.Uint64(b), Body: b[replyHead:]}
	switch b[8] {
	case 0:
	case 1:
		r.Failed = true
	default:
		return r, fmt.Errorf("malformed reply %d: status %d", r.ID, b[8])
	}
	return r, nil
}

// ---------------------------------------------------------------------------
// the calling side

type pipe struct {
	s   *Session
	st  *yamux.Stream
	wmu sync.Mutex // the one writer
	buf []byte     // request encoding buffer, under wmu

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan pipeReply
	err     error
	done    chan struct{}

	last atomic.Int64 // when the last call ended (unix ns)
	idle *time.Timer
}

// getPipe returns the session's call pipe, opening it on first use.
func (s *Session) getPipe(ctx context.Context) (*pipe, error) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.pipe != nil {
		select {
		case <-s.pipe.done:
		default:
			return s.pipe, nil
		}
	}
	st, err := s.open(ctx, pipeMethod, nil)
	if err != nil {
		return nil, err
	}
	// The first frame is the peer's greeting (or the error envelope of a
	// peer that refuses the pipe).
	deadline := time.Now().Add(s.limits.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	st.SetReadDeadline(deadline)
	b, err := ReadFrame(st, 1<<16)
	shrink(st) // the first reply gets a buffer of its own size
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("opening call pipe: %w", err)
	}
	if string(b) != pipeHello {
		st.Close()
		if env, derr := DecodeEnvelope(b); derr == nil && env.Error != nil {
			return nil, fmt.Errorf("opening call pipe: %w", env.Error)
		}
		return nil, fmt.Errorf("opening call pipe: unexpected greeting %.40q", b)
	}
	st.SetReadDeadline(time.Time{})
	p := &pipe{s: s, st: st, pending: map[uint64]chan pipeReply{}, done: make(chan struct{})}
	p.last.Store(time.Now().UnixNano())
	p.idle = time.AfterFunc(s.limits.PipeIdle, p.idleCheck)
	if !s.goStream(p.readLoop) {
		st.Close()
		p.idle.Stop()
		return nil, errors.New("opening call pipe: the session is closed")
	}
	s.pipe = p
	return p, nil
}

// readLoop delivers replies. It reads the stream directly: yamux buffers
// what arrived, and a bufio.Reader per pipe would cost 4 KiB on each of
// thousands of sessions.
func (p *pipe) readLoop() {
	for {
		p.st.SetReadDeadline(time.Time{}) // calls have deadlines of their own
		b, err := p.s.readFrame(p.st)
		shrink(p.st)
		if err != nil {
			p.fail(fmt.Errorf("call pipe: %w", err))
			return
		}
		r, err := decodeReply(b)
		if err != nil {
			p.fail(fmt.Errorf("call pipe: %w", err))
			return
		}
		p.mu.Lock()
		ch := p.pending[r.ID]
		delete(p.pending, r.ID)
		p.mu.Unlock()
		if ch != nil {
			ch <- r // buffered: never blocks
		}
	}
}

// idleCheck closes the pipe when no call has used it for PipeIdle, so an
// idle session (thousands of LNMs between storms) keeps no pipe goroutines
// on either side. Only this side may close it safely: with nothing pending
// and the pipe marked closed under the lock, no call can be in flight.
func (p *pipe) idleCheck() {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	quiet := time.Since(time.Unix(0, p.last.Load()))
	if len(p.pending) > 0 || quiet < p.s.limits.PipeIdle {
		p.mu.Unlock()
		p.idle.Reset(max(p.s.limits.PipeIdle-quiet, time.Second))
		return
	}
	p.err = errPipeIdle
	close(p.done)
	p.mu.Unlock()
	p.st.Close()
}

// fail ends the pipe: pending calls get err, the next call opens a new pipe.
func (p *pipe) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
		close(p.done)
	}
	p.mu.Unlock()
	p.idle.Stop()
	p.st.Close()
}

func (p *pipe) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

var replyChans = sync.Pool{New: func() any { return make(chan pipeReply, 1) }}

// call sends one request and waits for its reply until deadline.
func (p *pipe) call(ctx context.Context, method string, args []byte, deadline time.Time, reply any) error {
	ch := replyChans.Get().(chan pipeReply)
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		replyChans.Put(ch)
		if err == errPipeIdle {
			return err // nothing sent: the caller opens a new pipe
		}
		return fmt.Errorf("%s: %w", method, err)
	}
	p.next++
	id := p.next
	p.pending[id] = ch
	p.mu.Unlock()
	forget := func() bool {
		p.mu.Lock()
		_, waiting := p.pending[id]
		delete(p.pending, id)
		p.mu.Unlock()
		return waiting
	}

	p.wmu.Lock()
	p.buf = appendRequest(p.buf[:0], id, time.Until(deadline), method, args)
	p.st.SetWriteDeadline(time.Now().Add(p.s.limits.WriteTimeout))
	_, err := p.st.Write(p.buf)
	if cap(p.buf) > 64<<10 {
		p.buf = nil
	}
	p.wmu.Unlock()
	if err != nil {
		p.fail(fmt.Errorf("writing call: %w", err))
		forget()
		return fmt.Errorf("%s: sending call: %w", method, err)
	}

	defer p.last.Store(time.Now().UnixNano())
	// A caller whose context ends by the deadline needs no timer of its
	// own (the usual case: Call takes the deadline from ctx). Timers are
	// not free with tens of thousands in flight.
	var expired <-chan time.Time
	if d, ok := ctx.Deadline(); !ok || d.After(deadline) {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		expired = timer.C
	}
	var r pipeReply
	select {
	case r = <-ch:
		replyChans.Put(ch)
	case <-ctx.Done():
		if !forget() {
			// The reply raced in: drain it so the channel can be reused.
			<-ch
			replyChans.Put(ch)
		}
		return fmt.Errorf("%s: %w", method, ctx.Err())
	case <-expired:
		if !forget() {
			<-ch
			replyChans.Put(ch)
		}
		return fmt.Errorf("%s: %w", method, context.DeadlineExceeded)
	case <-p.done:
		if !forget() {
			<-ch
			replyChans.Put(ch)
		}
		return fmt.Errorf("%s: %w", method, p.failure())
	}
	if r.Failed {
		// The handler's context ends with the caller's: report that as
		// the caller's own deadline, as a per-stream call does.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s: %w", method, context.DeadlineExceeded)
		}
		var e api.Error
		if err := Unmarshal(r.Body, &e); err != nil || e.Code == "" {
			return fmt.Errorf("%s: malformed error reply", method)
		}
		return &e
	}
	if reply != nil && len(r.Body) > 0 {
		if err := Unmarshal(r.Body, reply); err != nil {
			return fmt.Errorf("%s: decoding reply: %w", method, err)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// the serving side

// servePipe serves calls arriving on a pipe stream until it ends. Each call
// takes a slot of the session's stream limit while its handler runs; with
// none free it is answered too_many. A pipe its dialer leaves idle longer
// than it would itself (PipeIdle) is closed.
func (s *Session) servePipe(ctx context.Context, st *yamux.Stream, mux *Mux) {
	var wmu sync.Mutex
	write := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		st.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
		if _, err := st.Write(b); err != nil {
			s.log.Debug("writing pipe reply", "err", err)
			st.Close() // the caller's pending calls fail now, not at their deadlines
		}
	}
	reply := func(id uint64, e *api.Error) {
		body, _ := Marshal(e)
		write(appendReply(nil, id, true, body))
	}
	write(appendFrame(nil, []byte(pipeHello)))
	idle := 2*s.limits.PipeIdle + s.limits.KeepAlive
	for {
		st.SetReadDeadline(time.Now().Add(idle))
		b, err := s.readFrame(st)
		shrink(st)
		if errors.Is(err, ErrFrameTooLarge) {
			// Answer it and skip its bytes: the pipe and the calls queued
			// behind it survive one oversized call.
			n := int64(binary.BigEndian.Uint32(b))
			var id [8]byte
			if n < 8 {
				return
			}
			st.SetReadDeadline(time.Now().Add(s.limits.FrameTimeout))
			if _, err := io.ReadFull(st, id[:]); err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, st, n-8); err != nil {
				return
			}
			reply(binary.BigEndian.Uint64(id[:]), &api.Error{Code: api.CodeBadRequest,
				Msg: fmt.Sprintf("call frame too large: %d bytes, limit %d", n, s.maxFrame())})
			continue
		}
		if err != nil {
			return
		}
		req, err := decodeRequest(b)
		if err != nil {
			// The framing is intact, so the pipe survives a bad call.
			reply(req.ID, &api.Error{Code: api.CodeBadRequest, Msg: err.Error()})
			continue
		}
		release, ok := s.admit()
		if !ok {
			reply(req.ID, &api.Error{Code: api.CodeTooMany, Msg: fmt.Sprintf("more than %d concurrent calls", cap(s.sem))})
			continue
		}
		if !s.goStream(func() {
			defer release()
			failed, body := s.handle(ctx, mux, req.Method, req.Args, req.Timeout)
			write(appendReply(make([]byte, 0, 4+replyHead+len(body)), req.ID, failed, body))
		}) {
			release()
			return
		}
	}
}

// handle runs one call's handler with its timeout, after the mux's guard,
// and returns the encoded result or error. A panicking handler fails its
// call only (logged with its stack).
func (s *Session) handle(ctx context.Context, mux *Mux, method string, args json.RawMessage, timeout time.Duration) (failed bool, body []byte) {
	encErr := func(err error) (bool, []byte) {
		b, _ := Marshal(api.AsError(err))
		return true, b
	}
	e, ok := mux.calls[method]
	if !ok {
		return encErr(&api.Error{Code: api.CodeUnknown, Msg: fmt.Sprintf("unknown method %q", method)})
	}
	if mux.guard != nil {
		if err := mux.guard(ctx, s, method, e.access); err != nil {
			return encErr(err)
		}
	}
	if timeout <= 0 {
		timeout = s.limits.CallTimeout
	}
	if timeout > s.limits.MaxCallTimeout {
		timeout = s.limits.MaxCallTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, herr := s.safeCall(cctx, method, e.h, args)
	if herr != nil {
		return encErr(herr)
	}
	rb, err := Marshal(res)
	if err != nil {
		return encErr(api.Errorf(api.ErrInternal, "encoding result: %v", err))
	}
	return false, rb
}

func (s *Session) safeCall(ctx context.Context, method string, h Handler, args json.RawMessage) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in a call handler; the call fails, the session goes on", "method", method, "panic", r, "stack", string(debug.Stack()))
			err = api.Errorf(api.ErrInternal, "%s: internal error (logged)", method)
		}
	}()
	return h(ctx, args)
}

// appendFrame appends payload with its length prefix.
func appendFrame(b, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}
