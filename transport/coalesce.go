package transport

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// coalescer wraps a connection so that the many small writes yamux makes
// (a 12-byte header, then the body, for every frame) reach TLS and the
// kernel as few large writes: Write appends to a buffer and a flusher
// goroutine, running only while there is data, writes whatever has
// accumulated. Under load frames from many
// streams share one TLS record and one syscall; when idle the extra cost is
// a goroutine hand-off. A write that stalls past writeTimeout fails the
// connection, so a peer that stops reading cannot block us forever.
// maxRecord caps each write to TLS, so a TLS record carries at most this
// much. The receiving side's TLS connection keeps a buffer as large as the
// largest record it ever got (Go's crypto/tls never shrinks it): with
// 16 KiB records that was about 32 KiB per connection, a third of a
// gigabyte at 10,000 LNMs; 4 KiB records keep it near 8 KiB.
const maxRecord = 4 << 10

type coalescer struct {
	net.Conn
	writeTimeout time.Duration
	max          int
	read         atomic.Int64 // when the last bytes were read (UnixNano)

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	spare    []byte
	err      error
	closed   bool
	flushing bool // a flush goroutine is running (only while there is data)
}

func newCoalescer(c net.Conn, writeTimeout time.Duration) *coalescer {
	w := &coalescer{Conn: c, writeTimeout: writeTimeout, max: 1 << 20}
	w.cond = sync.NewCond(&w.mu)
	w.read.Store(time.Now().UnixNano())
	return w
}

// Read reads from the connection and notes when something arrived (the
// session's keepalive pings only a peer it has not heard from).
func (w *coalescer) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.read.Store(time.Now().UnixNano())
	}
	return n, err
}

func (w *coalescer) lastRead() time.Time { return time.Unix(0, w.read.Load()) }

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
	if !w.flushing {
		// The flusher runs while there is data and exits when the buffer
		// is empty: an idle connection (of thousands) costs no goroutine.
		w.flushing = true
		go w.flush()
	}
	return len(p), nil
}

func (w *coalescer) flush() {
	for {
		w.mu.Lock()
		if w.err != nil || len(w.buf) == 0 {
			w.flushing = false
			w.cond.Broadcast()
			w.mu.Unlock()
			return
		}
		out := w.buf
		w.buf = w.spare[:0]
		w.mu.Unlock()

		if w.writeTimeout > 0 {
			w.Conn.SetWriteDeadline(time.Now().Add(w.writeTimeout))
		}
		var err error
		for rest := out; len(rest) > 0 && err == nil; {
			n := min(len(rest), maxRecord)
			_, err = w.Conn.Write(rest[:n])
			rest = rest[n:]
		}

		w.mu.Lock()
		w.spare = out[:0]
		if cap(w.spare) > 4*w.max || cap(w.spare) > 64<<10 && len(out) < 4<<10 {
			w.spare = nil // don't keep a big buffer for small traffic
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
	done := make(chan struct{})
	go func() {
		w.mu.Lock()
		for w.flushing {
			w.cond.Wait()
		}
		w.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return w.Conn.Close()
}
