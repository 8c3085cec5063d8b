package repl

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// term is the real ush binary running on a pseudo-terminal.
type term struct {
	t    *testing.T
	cmd  *exec.Cmd
	pty  *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	mark int           // cleaned output before mark has been consumed
	more chan struct{} // signalled on new output
	done chan struct{} // closed when the reader sees EOF
}

func startTerm(t *testing.T, env []string, args ...string) *term {
	t.Helper()
	cmd := exec.Command(ushBinary(t), args...)
	cmd.Env = env
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 50, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	tm := &term{t: t, cmd: cmd, pty: f, more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(tm.done)
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			if n > 0 {
				tm.mu.Lock()
				tm.buf.Write(b[:n])
				tm.mu.Unlock()
				select {
				case tm.more <- struct{}{}:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		if testing.Verbose() {
			t.Logf("terminal output (escapes removed):\n%s", tm.output())
		}
		cmd.Process.Kill()
		cmd.Wait()
		f.Close()
		<-tm.done
	})
	return tm
}

func (tm *term) output() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return clean(tm.buf.String())
}

// expect waits (up to 20s) until the output after the mark matches re,
// moves the mark past the match and returns the text up to its end.
func (tm *term) expect(re string) string {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(20 * time.Second)
	for {
		out := tm.output()
		if tm.mark > len(out) {
			tm.mark = len(out)
		}
		if loc := rx.FindStringIndex(out[tm.mark:]); loc != nil {
			seg := out[tm.mark : tm.mark+loc[1]]
			tm.mark += loc[1]
			return seg
		}
		select {
		case <-tm.more:
		case <-tm.done:
			// drain once more, then give up
			if loc := rx.FindStringIndex(tm.output()[tm.mark:]); loc == nil {
				tm.t.Fatalf("shell ended before %q appeared; output after mark:\n%s", re, tm.output()[tm.mark:])
			}
		case <-deadline:
			tm.t.Fatalf("timed out waiting for %q; output after mark:\n%s", re, out[tm.mark:])
		}
	}
}

// tabUntil presses Tab until the output after the mark matches re (at
// most five times, each waiting up to 4s), then moves the mark past it.
func (tm *term) tabUntil(re string) {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	for i := 0; i < 5; i++ {
		tm.send("\t")
		deadline := time.After(4 * time.Second)
	wait:
		for {
			out := tm.output()
			if loc := rx.FindStringIndex(out[min(tm.mark, len(out)):]); loc != nil {
				tm.mark += loc[1]
				return
			}
			select {
			case <-tm.more:
			case <-deadline:
				break wait
			}
		}
	}
	tm.t.Fatalf("Tab never showed %q; output after mark:\n%s", re, tm.output()[min(tm.mark, len(tm.output())):])
}

// seen waits (up to 20s) until the whole output matches re; the mark
// stays.
func (tm *term) seen(re string) {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(20 * time.Second)
	for !rx.MatchString(tm.output()) {
		select {
		case <-tm.more:
		case <-tm.done:
			tm.t.Fatalf("shell ended before %q appeared", re)
		case <-deadline:
			tm.t.Fatalf("timed out waiting for %q", re)
		}
	}
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if _, err := io.WriteString(tm.pty, s); err != nil {
		tm.t.Fatal(err)
	}
}

// exit sends exit and waits for the process to end with status 0.
func (tm *term) exit() {
	tm.t.Helper()
	tm.send("exit\r")
	errc := make(chan error, 1)
	go func() { errc <- tm.cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			tm.t.Fatalf("ush exited with %v; output:\n%s", err, tm.output())
		}
	case <-time.After(20 * time.Second):
		tm.t.Fatalf("ush did not exit; output:\n%s", tm.output())
	}
}

func TestShellOnTerminal(t *testing.T) {
	s := testSite(t, 2, 0)
	cfg := writeClientConfig(t, s, "alice", "alice-pw")
	env := shellEnv(t, cfg)
	hist := filepath.Join(t.TempDir(), "state", "history")

	tm := startTerm(t, env, "--history-file", hist)
	tm.expect(`connected to .* as alice; 0 VMs cached`)
	tm.expect(`ush> `)

	// an asynchronous remote call
	tm.send("start -n web -c 2\r")
	tm.expect(`<Command 1 result pending\.\.\.>`)
	res := tm.expect(`Command 1 result:[^\n]*\n[^\n]*started 2 of 2 VMs in cluster web`)
	_ = res
	tm.expect(`web2\s+running\s+node2`)

	// a pushed notification after an operation
	tm.send("pause web1\r")
	tm.expect(`<Command 2 result pending\.\.\.>`)
	tm.expect(`\* web1 is now paused on node1`)

	// list answers at once from the cache: no pending line, no number
	tm.send("list\r")
	seg := tm.expect(`(?s)NAME\s+CLUSTER\s+STATE.*web1\s+web\s+paused\s+node1.*2 VMs`)
	if strings.Contains(seg, "pending") || strings.Contains(seg, "Command 3") {
		t.Fatalf("list was not answered from the cache:\n%s", seg)
	}

	// a notification arrives while a line is half typed: the typed text
	// survives (it is redrawn after the message) and runs as typed.
	tm.send("resume web1\r")
	tm.expect(`<Command 3 result pending\.\.\.>`)
	tm.send("who")
	tm.expect(`\* web1 is now running on node1`)
	tm.send("ami\r")
	tm.expect(`alice@usher\.local`)

	// completion of VM names from the cache (once the resume's result is
	// printed: a result arriving between two Tabs redraws the line, and the
	// second Tab counts as a first)
	tm.seen(`resumed 1 of 1 VMs`)
	tm.send("pause w\t")
	tm.expect(`ush> pause web`)
	// A second Tab lists the candidates. Anything printed between the two
	// (a notification redraws the line) makes liner count the next Tab as
	// a first again, so Tab is pressed until the list shows.
	tm.tabUntil(`web1\s+web2`)
	tm.send("\x15") // Ctrl-U: drop the line
	// completion of commands and options
	tm.send("list --st\t")
	tm.expect(`list --status `)
	tm.send("\x15")

	// watch streams events in the background; Ctrl-C stops it
	tm.send("watch\r")
	tm.expect(`watching events`)
	tm.send("reboot web2\r")
	tm.expect(`<Command 4 result pending\.\.\.>`)
	tm.expect(`web2\.alice: op_complete reboot ok`)
	tm.send("\x03")
	tm.expect(`stopped watching`)

	// disconnect and connect again; the connection change is printed
	tm.send("disconnect\r")
	tm.expect(`disconnected \(connect to come back\)`)
	tm.send("pause web1\r")
	tm.expect(`Command 5 failed: not connected`)
	tm.send("connect\r")
	tm.expect(`\* reconnected to the controller`)
	tm.expect(`Command 6 result: connected`)

	tm.send("jobs\r")
	tm.expect(`(?s)1\s+done.*start -n web -c 2.*3\s+done.*resume web1`)
	tm.send("help pause\r")
	tm.expect(`(?s)Examples:.*pause web1`)
	tm.exit()

	// history survives a restart
	tm2 := startTerm(t, env, "--history-file", hist)
	tm2.expect(`ush> `)
	tm2.send("\x1b[A") // Up: the last command, exit
	tm2.expect(`ush> exit`)
	tm2.send("\x1b[A") // Up again
	tm2.expect(`ush> help pause`)
	tm2.send("\x15")
	tm2.exit()
	if b, err := os.ReadFile(hist); err != nil || !strings.Contains(string(b), "start -n web -c 2\n") {
		t.Fatalf("history file: %v %q", err, b)
	}
}

func TestPasswordPromptWithoutEcho(t *testing.T) {
	s := testSite(t, 1, 0)
	cfg := writeClientConfig(t, s, "alice", "") // no password in the file
	tm := startTerm(t, shellEnv(t, cfg), "--history-file", filepath.Join(t.TempDir(), "h"))
	tm.expect(`Password for alice at .*: `)
	tm.send("alice-pw\r")
	tm.expect(`connected to .* as alice`)
	if strings.Contains(tm.output(), "alice-pw") {
		t.Fatalf("password echoed:\n%s", tm.output())
	}
	tm.expect(`ush> `)
	tm.exit()
}

// A console on a real terminal: the log's tail, keystrokes echoed by the
// (simulated) guest, Ctrl-] back to the shell, which reads its next line
// itself (no reader left behind on the terminal). Others cannot attach;
// admins can read the log.
func TestConsoleOnTerminal(t *testing.T) {
	s := testSite(t, 1, 0)
	cfg := writeClientConfig(t, s, "alice", "alice-pw")
	tm := startTerm(t, shellEnv(t, cfg))
	tm.expect(`ush> `)
	tm.send("start -n web -c 1\r")
	tm.expect(`started 1 of 1 VMs in cluster web`)
	tm.send("console web1\r")
	tm.expect(`Connected to the console of web1\.alice\.usher\.local\. Detach with Ctrl-\]\.`)
	tm.expect(`USHER-GUEST-UP web1\s+web1 login: `)
	tm.send("root\r")
	tm.expect(`root\s+web1 login: `)
	tm.send("\x1d")
	tm.expect(`\[web1\.alice\.usher\.local: detached\]`)
	tm.expect(`ush> `)
	tm.send("whoami\r")
	tm.expect(`alice@usher\.local`)
	tm.exit()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := Exec(ctx, connect(t, s, "bob"), "console --log web1.alice.usher.local", false, &out); err == nil || !strings.Contains(err.Error(), "no VM") {
		t.Errorf("bob read alice's console: %v %q", err, out.String())
	}
	out.Reset()
	if err := Exec(ctx, connect(t, s, "root"), "console --log web1.alice.usher.local", false, &out); err != nil || !strings.Contains(out.String(), "USHER-GUEST-UP web1") {
		t.Errorf("admin's console --log: %v %q", err, out.String())
	}
	out.Reset()
	if err := Exec(ctx, connect(t, s, "alice"), "console web1", false, &out); err == nil || !strings.Contains(err.Error(), "needs a terminal") {
		t.Errorf("attach without input: %v", err)
	}
}
