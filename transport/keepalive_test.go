package transport

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
)

// pingCounter passes a connection through and counts the yamux ping
// requests written on it (frame type 2 with the SYN flag), parsing the
// byte stream into frames whatever the write sizes.
type pingCounter struct {
	net.Conn
	mu    sync.Mutex
	hdr   []byte
	skip  uint32 // body bytes of the current data frame still to pass
	pings atomic.Int64
}

func (c *pingCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	for rest := p; len(rest) > 0; {
		if c.skip > 0 {
			n := min(uint32(len(rest)), c.skip)
			c.skip -= n
			rest = rest[n:]
			continue
		}
		need := 12 - len(c.hdr)
		n := min(need, len(rest))
		c.hdr = append(c.hdr, rest[:n]...)
		rest = rest[n:]
		if len(c.hdr) < 12 {
			break
		}
		typ, flags, length := c.hdr[1], binary.BigEndian.Uint16(c.hdr[2:4]), binary.BigEndian.Uint32(c.hdr[8:12])
		switch {
		case typ == 0: // data: a body follows
			c.skip = length
		case typ == 2 && flags&1 != 0: // ping request
			c.pings.Add(1)
		}
		c.hdr = c.hdr[:0]
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func keepalivePair(t *testing.T, keepalive time.Duration) (client, server *Session, cc, sc *pingCounter) {
	t.Helper()
	a, b := net.Pipe()
	sc, cc = &pingCounter{Conn: a}, &pingCounter{Conn: b}
	lim := DefaultLimits()
	lim.KeepAlive = keepalive
	var err error
	if server, err = newSession(sc, true, lim); err != nil {
		t.Fatal(err)
	}
	if client, err = newSession(cc, false, lim); err != nil {
		t.Fatal(err)
	}
	m := NewMux(nil)
	m.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) { return args, nil })
	server.SetMux(m)
	client.SetMux(NewMux(nil))
	ctx, cancel := context.WithCancel(context.Background())
	go server.Serve(ctx)
	go client.Serve(ctx)
	t.Cleanup(func() { cancel(); client.Close(); server.Close() })
	return client, server, cc, sc
}

// TestKeepaliveQuietUnderTraffic: a session that carries calls sends no
// keepalive pings from either side (traffic proves the peer is there).
func TestKeepaliveQuietUnderTraffic(t *testing.T) {
	client, _, cc, sc := keepalivePair(t, time.Second)
	end := time.Now().Add(2500 * time.Millisecond)
	for i := 0; time.Now().Before(end); i++ {
		echo(t, client, "x")
		if i%50 == 0 {
			time.Sleep(5 * time.Millisecond) // pacing the load, not synchronising
		}
	}
	if c, s := cc.pings.Load(), sc.pings.Load(); c != 0 || s != 0 {
		t.Fatalf("keepalive pings during 2.5 s of calls: %d from the dialer, %d from the acceptor; want none", c, s)
	}
}

// TestKeepaliveIdleDialerPings: on an idle session the dialing side pings
// once an interval and the accepting side, hearing it, stays quiet (yamux's
// keepalive had both sides ping every interval).
func TestKeepaliveIdleDialerPings(t *testing.T) {
	client, server, cc, sc := keepalivePair(t, 200*time.Millisecond)
	waitfor.True(t, 20*time.Second, "8 keepalive pings from the idle dialer", func() bool { return cc.pings.Load() >= 8 })
	if s := sc.pings.Load(); s > 2 {
		t.Fatalf("the accepting side sent %d pings while the dialer sent %d; it should stay quiet", s, cc.pings.Load())
	}
	if client.IsClosed() || server.IsClosed() {
		t.Fatal("an idle session whose peer answers pings was closed")
	}
}

// TestKeepaliveCutsSilentPeer: a peer that reads but never answers is cut
// off within the keepalive interval plus the write timeout.
func TestKeepaliveCutsSilentPeer(t *testing.T) {
	a, b := net.Pipe()
	go io.Copy(io.Discard, a) // the peer: a black hole
	t.Cleanup(func() { a.Close() })
	lim := DefaultLimits()
	lim.KeepAlive = 100 * time.Millisecond
	lim.WriteTimeout = 300 * time.Millisecond
	s, err := newSession(b, false, lim)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a silent peer was not cut off")
	}
	if d := time.Since(start); d < lim.KeepAlive {
		t.Fatalf("cut off after %v, before a keepalive interval passed", d)
	}
}
