package sim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/nodemgr"
)

var _ nodemgr.Consoler = (*Hypervisor)(nil)

// guestState returns a guest's state, or an error naming it.
func (h *Hypervisor) guestState(ctx context.Context, name string) (api.VMState, map[string]string, error) {
	unlock, err := h.begin(ctx, false)
	if err != nil {
		return "", nil, err
	}
	defer unlock()
	g := h.guests[name]
	if g == nil {
		return "", nil, fmt.Errorf("sim: %w: %s", nodemgr.ErrNoGuest, name)
	}
	return g.state, g.data, nil
}

func shortName(name string) string {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return name[:i]
	}
	return name
}

// ConsoleLog returns the simulated guest's boot log: what a small Linux
// guest prints, with the address its data gives it.
func (h *Hypervisor) ConsoleLog(ctx context.Context, name string, max int) ([]byte, error) {
	_, data, err := h.guestState(ctx, name)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Usher simulated guest %s on node %s\r\n", name, h.opts.Node)
	fmt.Fprintf(&b, "[    0.000000] Linux version 6.1.0-usher-sim\r\n[    0.412000] Run /init as init process\r\n")
	if ip := data[api.DataIP]; ip != "" {
		fmt.Fprintf(&b, "eth0: %s/%s gw %s\r\n", ip, data[api.DataSubnet], data[api.DataGateway])
	}
	if im := data[api.DataImage]; im != "" {
		fmt.Fprintf(&b, "root: overlay of image %s\r\n", im)
	}
	fmt.Fprintf(&b, "USHER-GUEST-UP %s\r\n\r\n%s login: ", shortName(name), shortName(name))
	out := []byte(b.String())
	if max > 0 && len(out) > max {
		out = out[len(out)-max:]
	}
	return out, nil
}

// Console attaches to a simulated getty: it echoes what is typed and
// answers every line with a new login prompt.
func (h *Hypervisor) Console(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	st, _, err := h.guestState(ctx, name)
	if err != nil {
		return nil, err
	}
	if st != api.StateRunning && st != api.StatePaused {
		return nil, fmt.Errorf("sim: %s is %s", name, st)
	}
	c := &getty{prompt: shortName(name) + " login: "}
	c.cond = sync.NewCond(&c.mu)
	return c, nil
}

// getty is a simulated serial console: no goroutines, a buffer of output.
type getty struct {
	mu     sync.Mutex
	cond   *sync.Cond
	out    bytes.Buffer
	prompt string
	closed bool
}

func (g *getty) Read(b []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.out.Len() == 0 && !g.closed {
		g.cond.Wait()
	}
	if g.out.Len() == 0 {
		return 0, io.EOF
	}
	return g.out.Read(b)
}

func (g *getty) Write(b []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, io.ErrClosedPipe
	}
	for _, c := range b {
		switch c {
		case '\r', '\n':
			g.out.WriteString("\r\n" + g.prompt)
		default:
			g.out.WriteByte(c)
		}
	}
	g.cond.Broadcast()
	return len(b), nil
}

func (g *getty) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.cond.Broadcast()
	return nil
}
