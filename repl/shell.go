package repl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"github.com/peterh/liner"
	"github.com/usher-vm/usher/client"
	"golang.org/x/sys/unix"
)

// Options configure an interactive shell.
type Options struct {
	Client      *client.Client // connected client; nil starts unconnected (connect uses Dial)
	In          io.Reader      // commands; the terminal when it is os.Stdin on a tty
	Out         io.Writer
	HistoryFile string // persistent history ("" keeps none)
	Prompt      string // default "ush> "

	// Optional.
	Dial func(ctx context.Context) (*client.Client, error) // for connect when Client is nil
	Addr string                                            // controller address, for whoami
	Own  bool                                              // Run closes Client when it returns
}

// Exec runs one command synchronously (no pending lines) and writes its
// result to out: JSON when jsonOut (or the command's --json) is set. It
// returns an error for any failure, including a request that only partly
// succeeded (after printing what was done).
func Exec(ctx context.Context, c *client.Client, line string, jsonOut bool, out io.Writer) error {
	return execLine(ctx, c, "", line, jsonOut, nil, out)
}

// execLine runs one command; in (nil: none) gives a console its
// keystrokes.
func execLine(ctx context.Context, c *client.Client, addr, line string, jsonOut bool, in io.Reader, out io.Writer) error {
	s := &session{out: &printer{w: out}, jsonOut: jsonOut, addr: addr, in: in}
	if f, ok := in.(*os.File); ok && isTerminal(int(f.Fd())) {
		s.tty = true
	}
	s.attach(c)
	defer s.close()
	st, j, err := s.prepare(ctx, line)
	if err != nil {
		return err
	}
	if st == nil || st.quit {
		return nil
	}
	if st.terminal != nil {
		return st.terminal(ctx)
	}
	jsonOut = jsonOut || j
	o := st.local
	if o == nil {
		if o, err = st.remote(ctx); err != nil {
			return err
		}
	}
	s.out.print(render(o, jsonOut))
	return o.err
}

// Run is the interactive shell. With os.Stdin and os.Stdout on a terminal
// it edits lines with liner (history, completion, notifications printed
// above the prompt); otherwise it reads plain lines from In, which keeps it
// scriptable and testable, and at the end of the input waits for pending
// results.
func Run(ctx context.Context, o Options) error {
	if o.In == nil {
		o.In = os.Stdin
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Prompt == "" {
		o.Prompt = "ush> "
	}
	s := &session{out: &printer{w: o.Out}, interactive: true, dial: o.Dial, addr: o.Addr, owned: o.Own}
	s.attach(o.Client)
	defer s.close()
	if o.In == io.Reader(os.Stdin) && o.Out == io.Writer(os.Stdout) && isTerminal(0) && isTerminal(1) && liner.TerminalSupported() {
		return s.runLiner(ctx, o)
	}
	return s.runPlain(ctx, o)
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

func (s *session) runPlain(ctx context.Context, o Options) error {
	sc := bufio.NewScanner(o.In)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if ctx.Err() != nil {
			return nil
		}
		if s.handle(ctx, ctx, sc.Text()) {
			return nil
		}
	}
	s.waitAll(ctx)
	return sc.Err()
}

// handle runs one line; it reports whether the shell should end. Remote
// steps run as jobs under jobCtx; cmdCtx bounds blocking built-ins (wait).
func (s *session) handle(jobCtx, cmdCtx context.Context, line string) bool {
	st, j, err := s.prepare(cmdCtx, line)
	if err != nil {
		s.out.print("error: " + err.Error())
		return false
	}
	if st == nil {
		return false
	}
	if st.quit {
		return true
	}
	jsonOut := s.jsonOut || j
	if st.terminal != nil {
		if err := st.terminal(cmdCtx); err != nil {
			s.out.print("error: " + err.Error())
		}
		return false
	}
	if st.local != nil {
		text := render(st.local, jsonOut)
		if st.local.err != nil && !jsonOut {
			text += "\n(incomplete: " + st.local.err.Error() + ")"
		}
		s.out.print(text)
		return false
	}
	s.launch(jobCtx, line, st, jsonOut)
	return false
}

func (s *session) runLiner(ctx context.Context, o Options) error {
	s.in, s.tty = os.Stdin, true
	ln := liner.NewLiner()
	defer ln.Close()
	ln.SetCtrlCAborts(true)
	ln.SetTabCompletionStyle(liner.TabPrints)
	ln.SetWordCompleter(s.complete)
	if o.HistoryFile != "" {
		if f, err := os.Open(o.HistoryFile); err == nil {
			ln.ReadHistory(f)
			f.Close()
		}
	}
	// A notification printed while a line is being edited clears that
	// line, prints itself, and then makes liner redraw prompt and text:
	// liner redraws on SIGWINCH, so the shell sends itself one.
	pid := os.Getpid()
	s.out.redraw = func() { syscall.Kill(pid, syscall.SIGWINCH) }

	// Ctrl-C while a built-in blocks (wait) interrupts that command only;
	// at the prompt liner reads it as a key.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	defer signal.Stop(sig)
	var curMu sync.Mutex
	var curCancel context.CancelFunc
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-sig:
				curMu.Lock()
				if curCancel != nil {
					curCancel()
				}
				curMu.Unlock()
			case <-done:
				return
			}
		}
	}()

	for {
		if ctx.Err() != nil {
			return nil
		}
		s.out.prompting.Store(true)
		line, err := ln.Prompt(o.Prompt)
		s.out.prompting.Store(false)
		switch {
		case errors.Is(err, liner.ErrPromptAborted):
			if s.stopWatch() {
				s.out.print("stopped watching")
			}
			continue
		case errors.Is(err, io.EOF):
			s.out.print("")
			return nil
		case err != nil:
			return err
		}
		if strings.TrimSpace(line) != "" {
			ln.AppendHistory(line)
			if o.HistoryFile != "" {
				if err := saveHistory(ln, o.HistoryFile); err != nil {
					s.out.print("warning: saving history: " + err.Error())
				}
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		curMu.Lock()
		curCancel = cancel
		curMu.Unlock()
		quit := s.handle(ctx, cctx, line)
		curMu.Lock()
		curCancel = nil
		curMu.Unlock()
		cancel()
		if quit {
			return nil
		}
	}
}

func saveHistory(ln *liner.State, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o600))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := ln.WriteHistory(f); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}

// --- completion ---

// complete is liner's word completer: it completes the word at pos.
func (s *session) complete(line string, pos int) (head string, out []string, tail string) {
	r := []rune(line)
	if pos > len(r) {
		pos = len(r)
	}
	before, tail := string(r[:pos]), string(r[pos:])
	i := strings.LastIndexAny(before, " \t") + 1
	head, word := before[:i], before[i:]
	words := strings.Fields(before[:i])
	kind, cands := s.candidates(words, word)
	if kind == argVMSet || kind == argLNMSet {
		if j := strings.LastIndexByte(word, ','); j >= 0 {
			head += word[:j+1]
			word = word[j+1:]
		}
	}
	seen := map[string]bool{}
	for _, c := range cands {
		if strings.HasPrefix(c, word) && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Strings(out)
	if len(out) == 1 && !strings.HasSuffix(out[0], "=") {
		out[0] += " "
	}
	return head, out, tail
}

// candidates lists what may follow words (the complete words before the
// cursor) given the partial word.
func (s *session) candidates(words []string, word string) (argKind, []string) {
	if len(words) == 0 {
		return argCommand, commandNames()
	}
	cmd := lookup(words[0])
	if cmd == nil {
		return argNone, nil
	}
	if cmd.name == "plan" {
		if len(words) == 1 && !strings.HasPrefix(word, "-") {
			return argPlan, planTargets()
		}
		if len(words) > 1 {
			return s.candidates(words[1:], word)
		}
	}
	if strings.HasPrefix(word, "-") {
		var out []string
		for _, o := range cmd.opts {
			out = append(out, "--"+o.long)
		}
		return argNone, append(out, "--json")
	}
	// value of the previous option?
	idx := 0
	for k := 1; k < len(words); k++ {
		w := words[k]
		if o := findOpt(cmd, w); o != nil {
			if o.arg != "" && !strings.Contains(w, "=") {
				if k == len(words)-1 {
					return o.kind, s.kindCands(o.kind)
				}
				k++
			}
			continue
		}
		if !strings.Contains(w, "=") {
			idx++
		}
	}
	if len(cmd.pos) == 0 {
		return argNone, nil
	}
	if idx >= len(cmd.pos) {
		idx = len(cmd.pos) - 1
	}
	k := cmd.pos[idx]
	return k, s.kindCands(k)
}

func findOpt(cmd *command, w string) *opt {
	if !strings.HasPrefix(w, "-") || len(w) < 2 {
		return nil
	}
	name := strings.TrimLeft(w, "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		name = name[:i]
	}
	for i := range cmd.opts {
		if cmd.opts[i].long == name || cmd.opts[i].short == name {
			return &cmd.opts[i]
		}
	}
	if name == "json" {
		return &jsonOpt
	}
	return nil
}

func commandNames() []string {
	var out []string
	for _, c := range commands {
		out = append(out, c.name)
		out = append(out, c.aliases...)
	}
	return out
}

func planTargets() []string {
	out := []string{"start", "migrate"}
	for _, c := range commands {
		if c.pos != nil && len(c.pos) == 1 && c.pos[0] == argVMSet && c.name != "list" {
			out = append(out, c.name)
		}
	}
	return out
}

func (s *session) kindCands(k argKind) []string {
	switch k {
	case argCommand:
		return commandNames()
	case argPlan:
		return planTargets()
	case argPolicy:
		return []string{"status"}
	case argVMSet, argCluster:
		c, err := s.client()
		if err != nil {
			return nil
		}
		var out []string
		if k == argVMSet {
			for _, v := range c.VMs() {
				out = append(out, v.Short)
			}
			for _, cl := range c.CachedClusters() {
				out = append(out, "@"+cl)
			}
			return out
		}
		return c.CachedClusters()
	case argLNMSet:
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return s.lnmNames(ctx, 30*time.Second)
	}
	return nil
}

// errorf is a tiny helper for Main.
func errorf(w io.Writer, format string, a ...any) { fmt.Fprintf(w, "ush: "+format+"\n", a...) }
