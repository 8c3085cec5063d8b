package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// tcpPair is two sessions over a loopback TCP connection (no TLS: the
// benchmark compares how calls use the session, not the cipher).
func tcpPair(b *testing.B) (client, server *Session) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		b.Fatal("accept failed")
	}
	lim := DefaultLimits()
	if server, err = newSession(sc, true, lim); err != nil {
		b.Fatal(err)
	}
	if client, err = newSession(cc, false, lim); err != nil {
		b.Fatal(err)
	}
	m := NewMux(nil)
	m.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) { return args, nil })
	// The same call as its own stream: the request frame opens it, one
	// reply frame, then both ends close it (how calls travelled before
	// the pipe).
	m.HandleStream("echo-stream", func(ctx context.Context, args json.RawMessage, st *Stream) error {
		return st.Send("r", args)
	})
	server.SetMux(m)
	client.SetMux(NewMux(nil))
	ctx, cancel := context.WithCancel(context.Background())
	go server.Serve(ctx)
	go client.Serve(ctx)
	b.Cleanup(func() { cancel(); client.Close(); server.Close() })
	return client, server
}

// BenchmarkCallPipeVsStream compares a call on the session's call pipe
// with the same call on a stream of its own, with GOMAXPROCS callers and
// eight times as many at once, and a start-sized argument (a VM object,
// about 400 bytes).
func BenchmarkCallPipeVsStream(b *testing.B) {
	arg := strings.Repeat("x", 400)
	pipe := func(c *Session) error {
		var got string
		return c.Call(context.Background(), "echo", arg, &got)
	}
	stream := func(c *Session) error {
		st, err := c.open(context.Background(), "echo-stream", arg)
		if err != nil {
			return err
		}
		s := &Stream{st: st, s: c}
		_, err = s.Recv(10 * time.Second)
		s.Close()
		return err
	}
	for _, v := range []struct {
		name string
		call func(*Session) error
	}{{"pipe", pipe}, {"stream", stream}} {
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/parallelism=%d", v.name, par), func(b *testing.B) {
				c, _ := tcpPair(b)
				b.SetParallelism(par)
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := v.call(c); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
