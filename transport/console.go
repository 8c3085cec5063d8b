package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
)

// Console streams (api.MConsole, api.LConsole) carry a serial console as
// api.ConsoleData frames both ways; see api.ConsoleArgs for the protocol.
// ConsoleBridge joins such a stream to a byte stream (the hypervisor's
// console on the LNM, the user's terminal in the client); ConsoleRelay
// joins two such streams (the controller, between a client and an LNM).

// ErrConsoleIdle ends a console stream whose peer sent nothing, not even
// a beat, for three keepalive intervals.
var ErrConsoleIdle = errors.New("console: the other side went silent")

// ConsoleError decodes an "error" frame.
func ConsoleError(env *Envelope) error {
	var e api.Error
	if err := Unmarshal(env.Args, &e); err != nil || e.Msg == "" {
		return errors.New("console: the other side failed without saying why")
	}
	return &e
}

// ConsoleBridge copies bytes from rw to st as "data" frames (with a "beat"
// after every keepalive without any) and "data" frames from st into rw,
// until either side ends: rw's EOF or error sends "eof"; the peer's "eof"
// or "error", a failed stream or ctx ends it too. It owns rw and closes it,
// and returns once both of its goroutines have. The error says why it
// ended (nil for an orderly end from either side).
func ConsoleBridge(ctx context.Context, st *Stream, rw io.ReadWriteCloser, keepalive time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	data := make(chan []byte)
	readErr := make(chan error, 1)
	wg.Add(2)
	go func() { // rw → data
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := rw.Read(buf)
			if n > 0 {
				b := append([]byte(nil), buf[:n]...)
				select {
				case data <- b:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	sendErr := make(chan error, 1)
	go func() { // data, beats → st: the stream's one sender
		defer wg.Done()
		beat := time.NewTicker(keepalive)
		defer beat.Stop()
		for {
			var err error
			select {
			case b := <-data:
				err = st.Send(api.ConsoleFrameData, api.ConsoleData{Data: b})
				beat.Reset(keepalive)
			case <-beat.C:
				err = st.Send(api.ConsoleFrameBeat, struct{}{})
			case rerr := <-readErr:
				if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrClosedPipe) {
					rerr = nil
				}
				if err := st.Send(api.ConsoleFrameEOF, struct{}{}); err != nil && rerr == nil {
					rerr = err
				}
				sendErr <- rerr
				cancel()
				return
			case <-ctx.Done():
				return
			}
			if err != nil {
				sendErr <- err
				cancel()
				return
			}
		}
	}()
	// st → rw, on this goroutine. A cancelled ctx (the other side ended)
	// closes the stream, which ends a Recv in progress.
	stop := context.AfterFunc(ctx, st.Abort)
	defer stop()
	var err error
	for err == nil {
		var env *Envelope
		env, err = st.Recv(3 * keepalive)
		if err != nil {
			if ctx.Err() != nil {
				err = nil // ended from our side (Abort)
			} else if isTimeout(err) {
				err = ErrConsoleIdle
			}
			break
		}
		switch env.Method {
		case api.ConsoleFrameData:
			var d api.ConsoleData
			if uerr := Unmarshal(env.Args, &d); uerr != nil || len(d.Data) > api.MaxConsoleFrame {
				err = fmt.Errorf("console: a malformed data frame (%d bytes at most)", api.MaxConsoleFrame)
				break
			}
			if _, werr := rw.Write(d.Data); werr != nil {
				err = fmt.Errorf("console: writing to the console: %w", werr)
			}
		case api.ConsoleFrameBeat:
		case api.ConsoleFrameEOF:
			cancel()
			rw.Close() // ends the reader
			wg.Wait()
			st.Close()
			return nil
		case api.ConsoleFrameError:
			err = ConsoleError(env)
		default:
			err = fmt.Errorf("console: unexpected frame %q", env.Method)
		}
	}
	cancel()
	rw.Close() // ends the reader
	wg.Wait()
	st.Close()
	select {
	case serr := <-sendErr:
		if err == nil {
			err = serr
		}
	default:
	}
	return err
}

// ConsoleRelay copies frames between two console streams (a client's and
// its LNM's), both ways, until either ends; it closes both. Only console
// frames pass, and data frames no larger than api.MaxConsoleFrame: the
// controller checks what it forwards.
func ConsoleRelay(ctx context.Context, a, b *Stream, keepalive time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { a.Abort(); b.Abort() })
	defer stop()
	errs := make(chan error, 2)
	pump := func(from, to *Stream) {
		for {
			env, err := from.Recv(3 * keepalive)
			if err != nil {
				if isTimeout(err) {
					err = ErrConsoleIdle
				}
				errs <- err
				return
			}
			var payload any = struct{}{}
			switch env.Method {
			case api.ConsoleFrameData:
				var d api.ConsoleData
				if Unmarshal(env.Args, &d) != nil || len(d.Data) > api.MaxConsoleFrame {
					to.Send(api.ConsoleFrameEOF, struct{}{})
					errs <- fmt.Errorf("console: a malformed data frame")
					return
				}
				payload = d
			case api.ConsoleFrameError:
				payload = api.AsError(ConsoleError(env))
			case api.ConsoleFrameBeat, api.ConsoleFrameReady, api.ConsoleFrameEOF:
			default:
				errs <- fmt.Errorf("console: unexpected frame %q", env.Method)
				return
			}
			if err := to.Send(env.Method, payload); err != nil {
				errs <- err
				return
			}
			if env.Method == api.ConsoleFrameEOF || env.Method == api.ConsoleFrameError {
				errs <- nil
				return
			}
		}
	}
	go pump(a, b)
	go pump(b, a)
	err := <-errs
	cancel() // closes both: the other pump's Recv ends
	if err2 := <-errs; err == nil && ctx.Err() == nil {
		err = err2
	}
	return err
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
