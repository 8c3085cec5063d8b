package repl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/client"
)

// printer serialises everything the shell writes. Asynchronous messages
// (results of pending commands, pushed notifications) go through notify,
// which, while the line editor owns the terminal, clears the line being
// typed, prints the message and asks the editor to redraw the prompt with
// the text typed so far.
type printer struct {
	mu        sync.Mutex
	w         io.Writer
	prompting atomic.Bool // the line editor is reading a line
	redraw    func()      // makes the editor redraw its line (liner: SIGWINCH)
}

func (p *printer) print(s string) {
	if s == "" {
		return
	}
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	p.mu.Lock()
	io.WriteString(p.w, s)
	p.mu.Unlock()
}

func (p *printer) notify(s string) {
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prompting.Load() && p.redraw != nil {
		io.WriteString(p.w, "\r\x1b[K"+s)
		p.redraw()
		return
	}
	io.WriteString(p.w, s)
}

// outcome is what a command produced.
type outcome struct {
	text  string // for people
	value any    // for --json; nil: print text
	err   error  // partial failure: text/value still printed, exit status 1
}

// step is a prepared command: either answered already (local) or a
// remote call still to make.
type step struct {
	local  *outcome
	remote func(ctx context.Context) (*outcome, error)
	// terminal runs synchronously with the terminal to itself (console):
	// not as a job, and never while the line editor reads.
	terminal func(ctx context.Context) error
	quit     bool
}

// job is a command running asynchronously.
type job struct {
	n     int
	line  string
	start time.Time
	done  chan struct{} // closed after the result has been printed
	out   *outcome
	err   error
	end   time.Time
}

// session is one shell: a client, its jobs and its output.
type session struct {
	out         *printer
	interactive bool
	jsonOut     bool
	// in is where a console's keystrokes come from (nil: nowhere, console
	// only shows logs); tty says it is a terminal to put in raw mode.
	in  io.Reader
	tty bool

	mu       sync.Mutex
	c        *client.Client
	dial     func(ctx context.Context) (*client.Client, error)
	owned    bool // the session closes c
	cancels  []func()
	jobs     []*job
	nextJob  int
	watchEnd context.CancelFunc
	watchWG  sync.WaitGroup
	lnmCache []string
	lnmAt    time.Time
	seen     map[string]string // last state@lnm notified per VM
	addr     string
}

func (s *session) client() (*client.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil, errors.New("not connected; use connect")
	}
	return s.c, nil
}

// attach installs c and, in interactive use, its notification callbacks.
func (s *session) attach(c *client.Client) {
	s.mu.Lock()
	for _, f := range s.cancels {
		f()
	}
	s.cancels = nil
	s.c = c
	s.mu.Unlock()
	if !s.interactive || c == nil {
		return
	}
	a := c.OnEvent(s.onEvent)
	b := c.OnConn(func(st client.ConnState, err error) {
		switch st {
		case client.Disconnected:
			msg := "* disconnected from the controller"
			if err != nil {
				msg += ": " + err.Error()
			}
			s.out.notify(msg + "; reconnecting")
		case client.Reconnected:
			s.out.notify("* reconnected to the controller")
		case client.Connected:
			s.out.notify("* connected to the controller")
		}
	})
	s.mu.Lock()
	s.cancels = append(s.cancels, a, b)
	s.mu.Unlock()
}

func (s *session) watching() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watchEnd != nil
}

// onEvent prints pushed notifications about the user's VMs.
func (s *session) onEvent(ev api.Event) {
	if s.watching() {
		return // the watch prints everything
	}
	if ev.Type == api.EvStateChanged && ev.VM != nil && ev.Detail["from"] == "" {
		// the controller may report one change twice (request and LNM
		// report); print each state once
		key := string(ev.VM.State) + "@" + ev.VM.LNM
		s.mu.Lock()
		if s.seen == nil {
			s.seen = map[string]string{}
		}
		dup := s.seen[ev.VM.Name] == key
		s.seen[ev.VM.Name] = key
		s.mu.Unlock()
		if dup {
			return
		}
	}
	if msg := describeEvent(ev, false); msg != "" {
		s.out.notify(msg)
	}
}

// describeEvent renders one event; all means print every kind (watch).
func describeEvent(ev api.Event, all bool) string {
	name := ""
	if ev.VM != nil {
		name = ev.VM.Short
		if all {
			name = ev.VM.Short + "." + ev.VM.Owner
		}
	}
	switch ev.Type {
	case api.EvStateChanged:
		if ev.VM == nil {
			return ""
		}
		if ev.Detail["from"] != "" && ev.Detail["to"] != "" {
			return fmt.Sprintf("* %s migrated %s -> %s (%s)", name, ev.Detail["from"], ev.Detail["to"], ev.VM.State)
		}
		msg := fmt.Sprintf("* %s is now %s", name, ev.VM.State)
		if ev.VM.LNM != "" {
			msg += " on " + ev.VM.LNM
		}
		if ev.VM.Reason != "" {
			msg += " (" + ev.VM.Reason + ")"
		}
		return msg
	case api.EvVMLost:
		return fmt.Sprintf("* %s is lost: its LNM %s is unreachable", name, ev.LNM)
	case api.EvVMMissing:
		return fmt.Sprintf("* %s is missing: it vanished from %s", name, ev.LNM)
	case api.EvStartComplete, api.EvOpComplete, api.EvMigrateComplete:
		if !ev.OK {
			what := strings.TrimSuffix(ev.Type, "_complete")
			if op := ev.Detail["op"]; op != "" {
				what = op
			}
			return fmt.Sprintf("* %s: %s failed: %s", name, what, ev.Error)
		}
		if all {
			what := ev.Type
			if op := ev.Detail["op"]; op != "" {
				what += " " + op
			}
			return fmt.Sprintf("* %s: %s ok", name, what)
		}
	case api.EvVMUnmanaged:
		if all {
			return fmt.Sprintf("* unmanaged VM %s found on %s", name, ev.LNM)
		}
	case api.EvLNMConnected:
		if all {
			return fmt.Sprintf("* LNM %s connected", ev.LNM)
		}
	case api.EvLNMDisconnected:
		if all {
			return fmt.Sprintf("* LNM %s disconnected", ev.LNM)
		}
	case api.EvLNMMode:
		if all {
			d := ev.Detail
			msg := fmt.Sprintf("* LNM %s %s", ev.LNM, d["mode"])
			if d["previous"] != "" && d["previous"] != d["mode"] {
				msg += " (was " + d["previous"] + ")"
			}
			if d["reason"] != "" && d["previous"] != d["mode"] {
				msg += ": " + d["reason"]
			}
			if d["fenced"] == "true" {
				msg += ", fenced"
			}
			if d["notice"] != "" {
				msg += " — " + d["notice"]
			}
			if ev.Error != "" {
				msg += " — error: " + ev.Error
			}
			return msg
		}
	case api.EvRecovered:
		return fmt.Sprintf("* the controller has rebuilt its state after a restart (%s LNMs, %s VMs)", ev.Detail["lnms"], ev.Detail["vms"])
	case api.EvError:
		if all {
			return fmt.Sprintf("* error: %s", ev.Error)
		}
	}
	return ""
}

// render turns an outcome into the text to print.
func render(o *outcome, jsonOut bool) string {
	if jsonOut && o.value != nil {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(o.value); err != nil {
			return fmt.Sprintf("error: encoding JSON: %v", err)
		}
		return strings.TrimRight(b.String(), "\n")
	}
	return o.text
}

// launch starts a remote step as job N and prints the pending line.
func (s *session) launch(ctx context.Context, line string, st *step, jsonOut bool) *job {
	s.mu.Lock()
	s.nextJob++
	j := &job{n: s.nextJob, line: line, start: time.Now(), done: make(chan struct{})}
	s.jobs = append(s.jobs, j)
	s.mu.Unlock()
	s.out.print(fmt.Sprintf("<Command %d result pending...>", j.n))
	go func() {
		o, err := st.remote(ctx)
		s.mu.Lock()
		j.out, j.err, j.end = o, err, time.Now()
		s.mu.Unlock()
		s.out.notify(jobText(j, jsonOut))
		close(j.done)
	}()
	return j
}

func jobText(j *job, jsonOut bool) string {
	if j.err != nil {
		return fmt.Sprintf("Command %d failed: %v", j.n, j.err)
	}
	text := render(j.out, jsonOut)
	msg := fmt.Sprintf("Command %d result: %s", j.n, text)
	if strings.Contains(text, "\n") || jsonOut {
		msg = fmt.Sprintf("Command %d result:\n%s", j.n, text)
	}
	if j.out.err != nil && !jsonOut {
		msg += "\n(incomplete: " + j.out.err.Error() + ")"
	}
	return msg
}

func (s *session) job(n int) *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.jobs {
		if j.n == n {
			return j
		}
	}
	return nil
}

func (s *session) allJobs() []*job {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*job(nil), s.jobs...)
}

// waitAll waits for every pending job (end of input).
func (s *session) waitAll(ctx context.Context) {
	for _, j := range s.allJobs() {
		select {
		case <-j.done:
		case <-ctx.Done():
			return
		}
	}
}

func (s *session) stopWatch() bool {
	s.mu.Lock()
	end := s.watchEnd
	s.watchEnd = nil
	s.mu.Unlock()
	if end == nil {
		return false
	}
	end()
	s.watchWG.Wait()
	return true
}

// close stops the watch and drops callbacks (and the client if owned).
func (s *session) close() {
	s.stopWatch()
	s.mu.Lock()
	for _, f := range s.cancels {
		f()
	}
	s.cancels = nil
	c, owned := s.c, s.owned
	s.mu.Unlock()
	if owned && c != nil {
		c.Close()
	}
}
