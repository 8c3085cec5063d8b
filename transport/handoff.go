package transport

import (
	"net"
	"sync"
)

// Handoff is one listening socket served in turns: a highly available
// controller keeps its address for its whole life and hands it from its
// standby server to each term's leader and back. Between two turns
// connections wait in the kernel's accept queue: the address never
// refuses a connection while the process lives, which is how standbys
// tell a dead leader from a live one (ha.Member.WatchLeader).
type Handoff struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// NewHandoff starts accepting on ln; Close stops it and closes ln.
func NewHandoff(ln net.Listener) *Handoff {
	h := &Handoff{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	h.wg.Add(1)
	go h.accept()
	return h
}

func (h *Handoff) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			h.Close()
			return
		}
		select {
		case h.conns <- c: // to whoever's turn it is
		case <-h.done:
			c.Close()
			return
		}
	}
}

// Close closes the socket; every turn's Accept then fails.
func (h *Handoff) Close() error {
	h.once.Do(func() {
		close(h.done)
		h.ln.Close()
	})
	return nil
}

// Wait waits for the accepting goroutine after Close.
func (h *Handoff) Wait() { h.wg.Wait() }

// Turn is a listener for one server's turn: its Close ends the turn (the
// socket stays open for the next).
func (h *Handoff) Turn() net.Listener {
	return &turn{h: h, closed: make(chan struct{})}
}

type turn struct {
	h      *Handoff
	closed chan struct{}
	once   sync.Once
}

func (t *turn) Accept() (net.Conn, error) {
	select {
	case <-t.closed:
		return nil, net.ErrClosed
	case <-t.h.done:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-t.h.conns:
		return c, nil
	case <-t.closed:
		return nil, net.ErrClosed
	case <-t.h.done:
		return nil, net.ErrClosed
	}
}

func (t *turn) Close() error {
	t.once.Do(func() { close(t.closed) })
	return nil
}

func (t *turn) Addr() net.Addr { return t.h.ln.Addr() }
