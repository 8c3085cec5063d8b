package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
)

// pipePair connects two sessions over an in-memory connection; the server
// side serves echo (returns its args), block (waits for its context) and
// fail (returns a coded error).
func pipePair(t *testing.T, mutate func(server *Session)) (client, server *Session) {
	return pipePairIdle(t, mutate, 0)
}

// pipePairIdle is pipePair with the caller's PipeIdle set (0: default).
func pipePairIdle(t *testing.T, mutate func(server *Session), idle time.Duration) (client, server *Session) {
	t.Helper()
	a, b := net.Pipe()
	lim := DefaultLimits()
	lim.MaxStreams = 64
	var err error
	server, err = newSession(a, true, lim)
	if err != nil {
		t.Fatal(err)
	}
	if idle > 0 {
		lim.PipeIdle = idle
	}
	client, err = newSession(b, false, lim)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(nil)
	m.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) { return args, nil })
	m.Handle("block", func(ctx context.Context, args json.RawMessage) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	m.Handle("fail", func(ctx context.Context, args json.RawMessage) (any, error) {
		return nil, Errorf(CodeRejected, "no")
	})
	server.SetMux(m)
	client.SetMux(NewMux(nil))
	if mutate != nil {
		mutate(server)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go server.Serve(ctx)
	go client.Serve(ctx)
	t.Cleanup(func() { cancel(); client.Close(); server.Close() })
	return client, server
}

func echo(t *testing.T, s *Session, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got string
	if err := s.Call(ctx, "echo", v, &got); err != nil {
		t.Fatalf("echo %q: %v", v, err)
	}
	if got != v {
		t.Fatalf("echo %q came back as %q", v, got)
	}
}

func TestPipeCarriesConcurrentCallsOnOneStream(t *testing.T) {
	c, srv := pipePair(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for i := 0; i < 60; i++ { // under the server's 64-call limit
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("call-%d-%s", i, strings.Repeat("x", i*37))
			var got string
			if err := c.Call(context.Background(), "echo", want, &got); err != nil {
				errs <- err
				return
			}
			if got != want {
				errs <- fmt.Errorf("call %d got another call's reply (%d bytes)", i, len(got))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every call went over the one pipe stream.
	if n := srv.ys.NumStreams(); n != 1 {
		t.Fatalf("server has %d streams open, want the one pipe", n)
	}
	err := c.Call(context.Background(), "fail", nil, nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeRejected || e.Msg != "no" {
		t.Fatalf("coded error lost on the pipe: %v", err)
	}
	err = c.Call(context.Background(), "nosuch", nil, nil)
	if !errors.As(err, &e) || e.Code != CodeUnknown {
		t.Fatalf("unknown method: %v", err)
	}
}

func TestPipeCallDeadlineLeavesPipeUsable(t *testing.T) {
	c, srv := pipePair(t, nil)
	echo(t, c, "warm")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Call(ctx, "block", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked call: %v", err)
	}
	echo(t, c, "after")
	if n := srv.ys.NumStreams(); n != 1 {
		t.Fatalf("server has %d streams, want the one pipe", n)
	}
}

func TestPipeBrokenFailsPendingAndReopens(t *testing.T) {
	c, _ := pipePair(t, nil)
	echo(t, c, "warm")
	c.pmu.Lock()
	p := c.pipe
	c.pmu.Unlock()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- c.Call(ctx, "block", nil, nil)
	}()
	// Wait until the call is pending on the pipe, then break the stream.
	waitfor.True(t, 10*time.Second, "the call to become pending", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.pending) == 1
	})
	p.st.Close()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("pending call on a broken pipe: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pending call not failed when its pipe broke")
	}
	echo(t, c, "reopened")
	c.pmu.Lock()
	reopened := c.pipe != p
	c.pmu.Unlock()
	if !reopened {
		t.Fatal("the broken pipe is still in use")
	}
}

func TestPipeOversizedCallAnsweredPipeSurvives(t *testing.T) {
	c, srv := pipePair(t, func(s *Session) { s.limits.MaxFrame = 1024 })
	echo(t, c, "warm")
	err := c.Call(context.Background(), "echo", strings.Repeat("a", 4096), nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeBadRequest || !strings.Contains(e.Msg, "too large") {
		t.Fatalf("oversized call: %v", err)
	}
	echo(t, c, "still here")
	if n := srv.ys.NumStreams(); n != 1 {
		t.Fatalf("server has %d streams, want the one pipe", n)
	}
}

func TestPipeMalformedRequestAnswered(t *testing.T) {
	c, _ := pipePair(t, nil)
	echo(t, c, "warm")
	c.pmu.Lock()
	p := c.pipe
	c.pmu.Unlock()
	const id = 1 << 40 // far from the ids real calls use
	ch := make(chan pipeReply, 1)
	p.mu.Lock()
	p.pending[id] = ch
	p.mu.Unlock()
	// A frame with a request id and a timeout but no method.
	bad := appendFrame(nil, append(binary.BigEndian.AppendUint64(nil, id), 0, 0, 0, 0, 0))
	p.wmu.Lock()
	_, err := p.st.Write(bad)
	p.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		var e Error
		if !r.Failed || json.Unmarshal(r.Body, &e) != nil || e.Code != CodeBadRequest {
			t.Fatalf("malformed call answered %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("malformed call not answered")
	}
	echo(t, c, "after garbage")
}

func FuzzPipeDecode(f *testing.F) {
	f.Add(appendRequest(nil, 1, time.Second, "start", []byte(`{"vms":[]}`))[4:])
	f.Add(appendReply(nil, 2, true, []byte(`{"code":"x","msg":"y"}`))[4:])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 20))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeRequest(b); err == nil {
			if r.Method == "" || len(r.Method) > 64 {
				t.Fatalf("accepted method %q", r.Method)
			}
			again := appendRequest(nil, r.ID, r.Timeout, r.Method, r.Args)[4:]
			if !bytes.Equal(again, b) {
				t.Fatalf("request does not round-trip: %x vs %x", again, b)
			}
		}
		if r, err := decodeReply(b); err == nil {
			again := appendReply(nil, r.ID, r.Failed, r.Body)[4:]
			if !bytes.Equal(again, b) {
				t.Fatalf("reply does not round-trip: %x vs %x", again, b)
			}
		}
	})
}

func TestPipeClosesWhenIdleAndReopens(t *testing.T) {
	c, srv := pipePairIdle(t, nil, 100*time.Millisecond)
	echo(t, c, "one")
	// Idle: the caller closes its pipe and the server's pipe stream ends.
	waitfor.True(t, 10*time.Second, "the idle pipe to close", func() bool { return srv.ys.NumStreams() == 0 })
	echo(t, c, "two")
	if n := srv.ys.NumStreams(); n != 1 {
		t.Fatalf("server has %d streams after reopening, want 1", n)
	}
	// A busy pipe is not closed under a long call.
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if err := c.Call(ctx, "block", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("long call on an idle-closing pipe: %v", err)
	}
}

// TestStuckStreamIsCutOff: a stream that never sends its first frame is
// closed by the server at the handshake deadline (yamux's keepalive would
// not notice: the session is alive).
func TestStuckStreamIsCutOff(t *testing.T) {
	c, _ := pipePair(t, func(s *Session) { s.limits.HandshakeTimeout = 300 * time.Millisecond })
	raw, err := RawStream(c)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(raw)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("stuck stream not closed by the server")
	}
}
