package transport

import (
	"net"
	"sync"
	"time"
)

// coalescer wraps a connection so that the many small writes yamux makes
// (a 12-byte header, then the body, for every frame) reach TLS and the
// kernel as few large writes: Write appends to a buffer and one flusher
// goroutine writes whatever has accumulated. Under load frames from many
// streams share one TLS record and one syscall; when idle the extra cost is
// a goroutine hand-off. A write that stalls past writeTimeout fails the
// connection, so a peer that stops reading cannot block us forever.
type coalescer struct {
	net.Conn
	writeTimeout time.Duration
	max          int

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	spare   []byte
	err     error
	closed  bool
	flushed chan struct{}
}

func newCoalescer(c net.Conn, writeTimeout time.Duration) *coalescer {
	w := &coalescer{Conn: c, writeTimeout: writeTimeout, max: 1 << 20, flushed: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.flushLoop()
	return w
}

// Write queues p. It blocks only while more than max bytes are queued.
func (w *coalescer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil && !w.closed && len(w.buf) > w.max {
		w.cond.Wait()
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, net.ErrClosed
	}
	w.buf = append(w.buf, p...)
	w.cond.Broadcast()
	return len(p), nil
}

func (w *coalescer) flushLoop() {
	defer close(w.flushed)
	for {
		w.mu.Lock()
		for len(w.buf) == 0 && !w.closed && w.err == nil {
			w.cond.Wait()
		}
		if w.err != nil || (w.closed && len(w.buf) == 0) {
			w.mu.Unlock()
			return
		}
		out := w.buf
		w.buf = w.spare[:0]
		w.mu.Unlock()

		if w.writeTimeout > 0 {
			w.Conn.SetWriteDeadline(time.Now().Add(w.writeTimeout))
		}
		_, err := w.Conn.Write(out)

		w.mu.Lock()
		w.spare = out[:0]
		if cap(w.spare) > 4*w.max {
			w.spare = nil // don't keep a huge buffer around
		}
		if err != nil {
			w.err = err
			w.Conn.Close()
		}
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// Close flushes what is queued (for at most a second) and closes.
func (w *coalescer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	select {
	case <-w.flushed:
	case <-time.After(time.Second):
	}
	return w.Conn.Close()
}
