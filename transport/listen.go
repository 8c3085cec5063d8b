package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Peer describes who is on the other end of an accepted session.
type Peer struct {
	LNM    string // node name from a verified LNM certificate, or ""
	Remote string // network address
	IP     string // remote IP, the key of per-peer caps
}

// ServerOptions bound what connecting peers may cost.
type ServerOptions struct {
	Limits         Limits
	MaxHandshaking int // connections allowed mid-handshake at once
	MaxPerIP       int // sessions allowed per remote IP
	Logger         *slog.Logger
}

// Server accepts TLS connections, runs yamux on them and hands each session
// to OnSession. Handshakes have a deadline; at most MaxHandshaking run at
// once and up to four times as many accepted connections wait their turn
// (for at most half the handshake timeout). Beyond that the server stops
// accepting: further connections wait in the kernel's accept queue, TCP
// established and their first flight buffered, instead of being accepted
// and shed into the peer's exponential backoff. So a herd (a whole site's
// LNMs reconnecting after a controller restart) is served in turn, as fast
// as handshakes go. Each remote IP may hold at most MaxPerIP sessions.
type Server struct {
	tls       *tls.Config
	opts      ServerOptions
	log       *slog.Logger
	onSession func(ctx context.Context, s *Session, p Peer)

	hs    chan struct{} // handshakes in progress
	room  chan struct{} // accepted connections not yet through their handshake
	mu    sync.Mutex
	perIP map[string]int
	wg    sync.WaitGroup
}

// NewServer builds a server; onSession runs in its own goroutine per session
// and owns it (the server closes it when onSession returns).
func NewServer(tlsCfg *tls.Config, opts ServerOptions, onSession func(ctx context.Context, s *Session, p Peer)) *Server {
	if opts.MaxHandshaking <= 0 {
		opts.MaxHandshaking = 256
	}
	if opts.MaxPerIP <= 0 {
		opts.MaxPerIP = 20000
	}
	opts.Limits = opts.Limits.withDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{tls: tlsCfg, opts: opts, log: log, onSession: onSession,
		hs: make(chan struct{}, opts.MaxHandshaking), room: make(chan struct{}, 5*opts.MaxHandshaking), perIP: map[string]int{}}
}

// Serve accepts on ln until ctx ends or ln is closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		// Room for one more before accepting it: otherwise it waits in
		// the kernel's accept queue.
		select {
		case s.room <- struct{}{}:
		case <-ctx.Done():
			s.wg.Wait()
			return nil
		}
		conn, err := ln.Accept()
		if err != nil {
			<-s.room
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			// Temporary failures (out of file descriptors): back off.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay < time.Second {
				delay *= 2
			}
			s.log.Warn("accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			left := false
			leave := func() { // the handshake is over, or never started
				if !left {
					left = true
					<-s.room
				}
			}
			defer leave()
			select {
			case s.hs <- struct{}{}:
			default:
				t := time.NewTimer(s.opts.Limits.HandshakeTimeout / 2)
				defer t.Stop()
				select {
				case s.hs <- struct{}{}:
				case <-t.C:
					s.log.Warn("shedding connection: no handshake slot in time", "remote", conn.RemoteAddr().String())
					conn.Close()
					return
				case <-ctx.Done():
					conn.Close()
					return
				}
			}
			s.handle(ctx, conn, leave)
		}()
	}
}

// handle runs the handshake of raw, which holds a handshake slot, and
// serves the session. done runs when the handshake is over.
func (s *Server) handle(ctx context.Context, raw net.Conn, done func()) {
	released := false
	release := func() {
		if !released {
			released = true
			<-s.hs
			done()
		}
	}
	defer release()
	ip, _, _ := net.SplitHostPort(raw.RemoteAddr().String())
	if !s.acquireIP(ip) {
		s.log.Warn("refusing connection: per-peer session cap", "ip", ip, "cap", s.opts.MaxPerIP)
		raw.Close()
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			s.releaseIP(ip)
		}
	}()
	conn := tls.Server(raw, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.opts.Limits.HandshakeTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.Debug("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	release()
	sess, err := NewSession(conn, true, s.opts.Limits, s.log)
	if err != nil {
		conn.Close()
		return
	}
	p := Peer{LNM: PeerLNM(conn.ConnectionState()), Remote: raw.RemoteAddr().String(), IP: ip}
	// The session is served by a new goroutine: this one's stack grew deep
	// in the TLS handshake and would stay that size for the session's
	// life (tens of KiB on each of thousands of sessions).
	handedOff = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.releaseIP(ip)
		defer sess.Close()
		s.onSession(ctx, sess, p)
	}()
}

func (s *Server) acquireIP(ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip] >= s.opts.MaxPerIP {
		return false
	}
	s.perIP[ip]++
	return true
}

func (s *Server) releaseIP(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

// Dial connects to addr over TLS and starts a yamux client session.
func Dial(ctx context.Context, addr string, tlsCfg *tls.Config, l Limits, log *slog.Logger) (*Session, error) {
	l = l.withDefaults()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: l.HandshakeTimeout, KeepAlive: 15 * time.Second}, Config: tlsCfg}
	hctx, cancel := context.WithTimeout(ctx, l.HandshakeTimeout)
	defer cancel()
	c, err := d.DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	s, err := NewSession(c, false, l, log)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}
