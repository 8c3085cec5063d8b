package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/transport"
)

// Console is a VM's serial console attached through the controller and
// its node: Read returns the log tail asked for, then what the guest
// prints; Write sends keystrokes; Close detaches. The console ends on its
// own when the VM stops or moves (Read returns io.EOF) or the link fails
// (Read returns the error).
type Console struct {
	r      io.Reader      // log tail, then outR
	outR   *io.PipeReader // the bridge writes what the guest prints to outW
	inW    *io.PipeWriter // keystrokes; the bridge reads inR
	done   chan struct{}
	err    error
	closed sync.Once
}

// consoleEnd is the bridge's side of the two pipes.
type consoleEnd struct {
	*io.PipeReader // keystrokes
	out            *io.PipeWriter
}

func (e consoleEnd) Write(b []byte) (int, error) { return e.out.Write(b) }
func (e consoleEnd) Close() error {
	e.PipeReader.Close()
	return e.out.Close()
}

// Console attaches to a VM's serial console (its owner or an admin).
// a.Tail bytes of the console's log come first. It returns once attached,
// or with the error that kept it from attaching.
func (c *Client) Console(ctx context.Context, a api.ConsoleArgs) (*Console, error) {
	if a.LogOnly {
		return nil, errors.New("console: use ConsoleLog for the log alone")
	}
	st, log, err := c.openConsole(ctx, a)
	if err != nil {
		return nil, err
	}
	s, _ := c.session()
	keep := 5 * time.Second
	if s != nil {
		keep = s.Limits().KeepAlive
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	con := &Console{r: io.MultiReader(bytes.NewReader(log), outR), outR: outR, inW: inW, done: make(chan struct{})}
	c.sessWG.Add(1)
	go func() {
		defer c.sessWG.Done()
		defer close(con.done)
		con.err = transport.ConsoleBridge(context.Background(), st, consoleEnd{inR, outW}, keep)
		outW.CloseWithError(endErr(con.err))
	}()
	return con, nil
}

func endErr(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// ConsoleLog returns up to tail bytes of the end of a VM's console log (0:
// as much as the node keeps, up to api.MaxConsoleTail): its boot log.
func (c *Client) ConsoleLog(ctx context.Context, vm string, tail int) ([]byte, error) {
	st, log, err := c.openConsole(ctx, api.ConsoleArgs{VM: vm, Tail: tail, LogOnly: true})
	if st != nil {
		st.Close()
	}
	return log, err
}

// openConsole opens the stream and reads the log up to "ready" (attached)
// or "eof" (log only; the stream is then done).
func (c *Client) openConsole(ctx context.Context, a api.ConsoleArgs) (*transport.Stream, []byte, error) {
	if err := a.Validate(); err != nil {
		return nil, nil, err
	}
	s, err := c.session()
	if err != nil {
		return nil, nil, err
	}
	st, err := transport.OpenStream(ctx, s, api.MConsole, a)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, st.Abort)
	defer stop()
	var log []byte
	bound := 3*s.Limits().KeepAlive + c.cfg.CallTimeout
	for {
		env, err := st.Recv(bound)
		if err != nil {
			st.Close()
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, nil, fmt.Errorf("console %s: %w", a.VM, err)
		}
		switch env.Method {
		case api.ConsoleFrameData:
			var d api.ConsoleData
			if transport.Unmarshal(env.Args, &d) == nil && len(log)+len(d.Data) <= api.MaxConsoleTail+api.MaxConsoleFrame {
				log = append(log, d.Data...)
			}
		case api.ConsoleFrameBeat:
		case api.ConsoleFrameReady:
			return st, log, nil
		case api.ConsoleFrameEOF:
			return st, log, nil
		case api.ConsoleFrameError:
			st.Close()
			return nil, nil, transport.ConsoleError(env)
		default:
			st.Close()
			return nil, nil, fmt.Errorf("console %s: unexpected frame %q", a.VM, env.Method)
		}
	}
}

// Read returns the log tail, then what the guest prints.
func (c *Console) Read(b []byte) (int, error) { return c.r.Read(b) }

// Write sends keystrokes to the guest.
func (c *Console) Write(b []byte) (int, error) { return c.inW.Write(b) }

// Close detaches and waits until the console's stream has ended.
func (c *Console) Close() error {
	c.closed.Do(func() {
		c.inW.Close()  // the bridge sends "eof"
		c.outR.Close() // a bridge blocked delivering output gives up
	})
	<-c.done
	return nil
}

// Done is closed when the console has ended (detached, the VM stopped or
// moved, or the link failed); Err then says why (nil: an orderly end).
func (c *Console) Done() <-chan struct{} { return c.done }

// Err is why the console ended, once Done is closed.
func (c *Console) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}
