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
	MaxHandshaking int // TLS handshakes in progress at once (default 256)
	// MaxPendingPerIP bounds the connections from one address that are
	// not yet authenticated: handshaking, waiting for a handshake slot,
	// or through TLS but not logged in (default 32). More are closed at
	// once, so one address's flood cannot take the slots of others.
	MaxPendingPerIP int
	MaxPerIP        int // sessions allowed per remote IP (default 20000)
	// LoginTimeout is how long a client session may stay unauthenticated
	// after its TLS handshake (default: the handshake timeout).
	LoginTimeout time.Duration
	// MaxPartial bounds the bytes of partly received frames across every
	// session of the server (default 1 GiB).
	MaxPartial int64
	Logger     *slog.Logger
}

// Server accepts TLS connections, runs yamux on them and hands each session
// to OnSession. Handshakes have a deadline; at most MaxHandshaking run at
// once and up to four times as many accepted connections wait their turn
// (for at most half the handshake timeout). Beyond that the server stops
// accepting: further connections wait in the kernel's accept queue, TCP
// established and their first flight buffered, instead of being accepted
// and shed into the peer's exponential backoff. So a herd (a whole site's
// LNMs reconnecting after a controller restart) is served in turn, as fast
// as handshakes go. One address may hold at most MaxPendingPerIP of those
// places and MaxPerIP sessions. The server owns every session goroutine:
// Serve returns once they have ended.
type Server struct {
	tls       *tls.Config
	opts      ServerOptions
	log       *slog.Logger
	onSession func(ctx context.Context, s *Session, p Peer)
	partial   *Budget

	hs      chan struct{} // handshakes in progress
	room    chan struct{} // accepted connections not yet through their handshake
	mu      sync.Mutex
	perIP   map[string]int
	pending map[string]int
	wg      sync.WaitGroup
}

// NewServer builds a server; onSession runs in its own goroutine per session
// and owns it (the server closes it when onSession returns).
func NewServer(tlsCfg *tls.Config, opts ServerOptions, onSession func(ctx context.Context, s *Session, p Peer)) *Server {
	if opts.MaxHandshaking <= 0 {
		opts.MaxHandshaking = 256
	}
	if opts.MaxPendingPerIP <= 0 {
		opts.MaxPendingPerIP = 32
	}
	if opts.MaxPerIP <= 0 {
		opts.MaxPerIP = 20000
	}
	if opts.MaxPartial <= 0 {
		opts.MaxPartial = 1 << 30
	}
	opts.Limits = opts.Limits.withDefaults()
	if opts.LoginTimeout <= 0 {
		opts.LoginTimeout = opts.Limits.HandshakeTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{tls: tlsCfg, opts: opts, log: log, onSession: onSession, partial: NewBudget(opts.MaxPartial),
		hs: make(chan struct{}, opts.MaxHandshaking), room: make(chan struct{}, 5*opts.MaxHandshaking),
		perIP: map[string]int{}, pending: map[string]int{}}
}

// Serve accepts on ln until ctx ends or ln is closed, then waits for the
// sessions it started to end.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	defer s.wg.Wait()
	// Closed when Serve returns, not later: a standby taking over the
	// address must be able to bind it.
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		// Room for one more before accepting it: otherwise it waits in
		// the kernel's accept queue.
		select {
		case s.room <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		conn, err := ln.Accept()
		if err != nil {
			<-s.room
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary failures (out of file descriptors): back off.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		delay = 0
		ip, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
		if !s.acquirePending(ip) {
			<-s.room
			conn.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			pending := true
			donePending := func() {
				if pending {
					pending = false
					s.releasePending(ip)
				}
			}
			defer donePending()
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
			s.handle(ctx, conn, ip, leave, donePending)
		}()
	}
}

// handle runs the handshake of raw, which holds a handshake slot, and
// serves the session. handshaken runs when the handshake is over,
// authenticated when the peer has authenticated (its pending place is
// given back).
func (s *Server) handle(ctx context.Context, raw net.Conn, ip string, handshaken, authenticated func()) {
	released := false
	release := func() {
		if !released {
			released = true
			<-s.hs
			handshaken()
		}
	}
	defer release()
	if !s.acquireIP(ip) {
		s.log.Warn("refusing connection: per-peer session cap", "ip", ip, "cap", s.opts.MaxPerIP)
		raw.Close()
		return
	}
	defer s.releaseIP(ip)
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
	p := Peer{LNM: PeerLNM(conn.ConnectionState()), Remote: raw.RemoteAddr().String(), IP: ip}
	sess, err := NewSession(conn, true, p.LNM != "", s.opts.Limits, s.partial, s.log)
	if err != nil {
		conn.Close()
		return
	}
	defer sess.Wait()
	defer sess.Close()
	if p.LNM != "" {
		authenticated() // by its certificate
	} else {
		sess.onAuth = authenticated
		login := time.AfterFunc(s.opts.LoginTimeout, func() {
			if !sess.IsAuthenticated() {
				s.log.Info("closing a session that did not log in in time", "remote", p.Remote)
				sess.Close()
			}
		})
		defer login.Stop()
	}
	s.onSession(ctx, sess, p)
}

func (s *Server) acquirePending(ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[ip] >= s.opts.MaxPendingPerIP {
		return false
	}
	s.pending[ip]++
	return true
}

func (s *Server) releasePending(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[ip]--; s.pending[ip] <= 0 {
		delete(s.pending, ip)
	}
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

// Dial connects to addr over TLS and starts a yamux client session. The
// peer (the server) is authenticated by its certificate.
func Dial(ctx context.Context, addr string, tlsCfg *tls.Config, l Limits, log *slog.Logger) (*Session, error) {
	l = l.withDefaults()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: l.HandshakeTimeout, KeepAlive: 15 * time.Second}, Config: tlsCfg}
	hctx, cancel := context.WithTimeout(ctx, l.HandshakeTimeout)
	defer cancel()
	c, err := d.DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	s, err := NewSession(c, false, true, l, nil, log)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}
