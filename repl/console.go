package repl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	xterm "golang.org/x/term"

	"github.com/usher-vm/usher/api"
)

// detachKey ends an attached console: Ctrl-], as virsh console.
const detachKey = 0x1d

func init() {
	commands = append(commands, &command{name: "console", usage: "[--log] [--tail BYTES] VM",
		summary: "attach to a VM's serial console (Ctrl-] detaches)",
		doc: `Attaches to the serial console of one of your VMs (admins: anyone's)
through the controller and the VM's node: what the guest prints shows
up, what you type goes to the guest. The last --tail bytes of the
console's log come first (default 2048: the end of the boot log, the
login prompt). Ctrl-] detaches; the console also ends when the VM stops
or moves to another node (attach again: it follows the VM). With --log
it prints the console's log (the whole boot log, up to 1 MiB) and
returns, for any VM its node still holds, running or not.

Attaching needs a terminal (the shell on a terminal, or ush -c with the
keystrokes on standard input); --log works everywhere.

Examples:
  console web1
  console --log web1
  ush -c 'console --log --tail 200 web1'`,
		opts: []opt{
			{long: "log", help: "print the console's log and return"},
			{long: "tail", arg: "BYTES", help: "bytes of the log shown first (default 2048; with --log: all)"},
		},
		pos: []argKind{argVMSet}, run: cmdConsole})
}

func cmdConsole(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	if len(a.pos) != 1 {
		return nil, errors.New("console takes one VM (see help console)")
	}
	name := a.pos[0]
	if names, err := c.Expand(name); err == nil && len(names) == 1 {
		name = names[0]
	} else if err == nil && len(names) > 1 {
		return nil, fmt.Errorf("console: %s names %d VMs; give one", a.pos[0], len(names))
	} else if strings.Count(name, ".") < 2 {
		// Not one of ours by its short name: an admin gives full names.
		return nil, fmt.Errorf("console: %w", err)
	}
	tail := 2048
	if t, ok := a.opts["tail"]; ok {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 || n > api.MaxConsoleTail {
			return nil, fmt.Errorf("console: --tail %q: 0 to %d bytes", t, api.MaxConsoleTail)
		}
		tail = n
	} else if a.has("log") {
		tail = 0
	}
	if a.has("log") {
		return &step{remote: func(ctx context.Context) (*outcome, error) {
			b, err := c.ConsoleLog(ctx, name, tail)
			if err != nil {
				return nil, err
			}
			return &outcome{text: string(b), value: map[string]string{"vm": name, "log": string(b)}}, nil
		}}, nil
	}
	if s.in == nil {
		return nil, errors.New("console: attaching needs a terminal (run ush on one, or ush -c 'console VM'); console --log VM prints the log")
	}
	return &step{terminal: func(ctx context.Context) error { return s.attachConsole(ctx, name, tail) }}, nil
}

// attachConsole runs an attached console until Ctrl-], the end of the
// input, the end of the console or ctx.
func (s *session) attachConsole(ctx context.Context, name string, tail int) error {
	c, err := s.client()
	if err != nil {
		return err
	}
	con, err := c.Console(ctx, api.ConsoleArgs{VM: name, Tail: tail})
	if err != nil {
		return err
	}
	out := s.out.w
	fmt.Fprintf(out, "Connected to the console of %s. Detach with Ctrl-].\r\n", name)
	if s.tty {
		if f, ok := s.in.(*os.File); ok {
			old, err := xterm.MakeRaw(int(f.Fd()))
			if err == nil {
				defer xterm.Restore(int(f.Fd()), old)
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the guest's output; ends when the console does
		defer wg.Done()
		io.Copy(out, con)
	}()
	keys, stop, err := keystrokes(s.in)
	if err != nil {
		con.Close()
		wg.Wait()
		return err
	}
	why := "detached"
loop:
	for {
		select {
		case b, ok := <-keys:
			if !ok {
				break loop // end of input
			}
			if i := bytes.IndexByte(b, detachKey); i >= 0 {
				con.Write(b[:i])
				break loop
			}
			if _, err := con.Write(b); err != nil {
				why = "the console ended"
				break loop
			}
		case <-con.Done():
			why = "the console ended"
			if err := con.Err(); err != nil {
				why += ": " + err.Error()
			}
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	stop()
	con.Close()
	wg.Wait()
	fmt.Fprintf(out, "\r\n[%s: %s]\r\n", name, why)
	return nil
}

// keystrokes delivers what the user types in chunks. For a file (a
// terminal, a pipe) it polls the descriptor together with a wake-up pipe,
// so that stop leaves no reader behind to steal the shell's next input.
// stop returns once the reader has ended; the channel closes at the end
// of the input.
func keystrokes(in io.Reader) (<-chan []byte, func(), error) {
	ch := make(chan []byte)
	done := make(chan struct{})
	f, ok := in.(*os.File)
	if !ok {
		quit := make(chan struct{})
		go func() {
			defer close(done)
			defer close(ch)
			buf := make([]byte, 1024)
			for {
				n, err := in.Read(buf)
				if n > 0 {
					select {
					case ch <- append([]byte(nil), buf[:n]...):
					case <-quit:
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		var once sync.Once
		return ch, func() { once.Do(func() { close(quit) }); <-done }, nil
	}
	wr, ww, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	quit := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		defer wr.Close()
		buf := make([]byte, 1024)
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}, {Fd: int32(wr.Fd()), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			if fds[1].Revents != 0 {
				return // stop
			}
			if fds[0].Revents == 0 {
				continue
			}
			n, err := unix.Read(int(f.Fd()), buf)
			if n <= 0 || err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
					continue
				}
				return // end of input
			}
			select {
			case ch <- append([]byte(nil), buf[:n]...):
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			close(quit)
			ww.Write([]byte{0})
			ww.Close()
		})
		<-done
	}
	return ch, stop, nil
}
