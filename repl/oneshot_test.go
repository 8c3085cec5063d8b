package repl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
)

type runResult struct {
	code           int
	stdout, stderr string
}

func runUsh(t *testing.T, env []string, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ushBinary(t), args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return runResult{code, out.String(), errb.String()}
}

func TestOneShotExitCodes(t *testing.T) {
	s := testSite(t, 2, 3) // quota: 3 VMs per user
	env := shellEnv(t, writeClientConfig(t, s, "alice", "alice-pw"))

	r := runUsh(t, env, "-c", "start -n web -c 2 image=debian")
	if r.code != 0 || !strings.Contains(r.stdout, "started 2 of 2 VMs in cluster web") || strings.Contains(r.stdout, "pending") {
		t.Fatalf("start: %+v", r)
	}
	// partial failure: the quota drops 2 of 3; what was done is printed, exit 1
	r = runUsh(t, env, "-c", "start -n db -c 3")
	if r.code != 1 || !strings.Contains(r.stdout, "started 1 of 3 VMs") || !strings.Contains(r.stdout, "quota") ||
		!strings.Contains(r.stderr, "only 1 of 3 VMs started") {
		t.Fatalf("partial start: %+v", r)
	}
	// the client refuses a VM that is not among the user's, before sending
	r = runUsh(t, env, "-c", "pause nosuch")
	if r.code != 1 || !strings.Contains(r.stderr, `no such VM "nosuch"`) {
		t.Fatalf("unknown VM: %+v", r)
	}
	// --json and words instead of -c
	r = runUsh(t, env, "--json", "list", "--status")
	var lr api.ListReply
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &lr) != nil || len(lr.VMs) != 3 {
		t.Fatalf("list --json: %+v", r)
	}
	r = runUsh(t, env, "-c", "pause web[1-2]", "--json")
	var res api.Result
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil || res.OK() != 2 {
		t.Fatalf("pause --json: %+v", r)
	}
	// not allowed by policy
	r = runUsh(t, env, "-c", "list -a")
	if r.code != 1 || !strings.Contains(r.stderr, "only admins") {
		t.Fatalf("list -a as alice: %+v", r)
	}
	// usage errors
	r = runUsh(t, env, "-c", "explode web1")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown command "explode"`) {
		t.Fatalf("unknown command: %+v", r)
	}
	r = runUsh(t, env, "-c", "start -n web")
	if r.code != 1 || !strings.Contains(r.stderr, "how many") {
		t.Fatalf("start without count: %+v", r)
	}
	// wrong password
	r = runUsh(t, env, "--password", "wrong", "-c", "whoami")
	if r.code != 1 || !strings.Contains(r.stderr, "unauthorized") {
		t.Fatalf("wrong password: %+v", r)
	}
	// no password and no terminal
	env2 := shellEnv(t, writeClientConfig(t, s, "alice", ""))
	r = runUsh(t, env2, "-c", "whoami")
	if r.code != 2 || !strings.Contains(r.stderr, "no password") {
		t.Fatalf("no password: %+v", r)
	}
	// documentation and completion scripts need no controller
	for _, args := range [][]string{{"--help"}, {"help", "start"}, {"completion", "bash"}, {"completion", "zsh"}} {
		r = runUsh(t, shellEnv(t, ""), args...)
		if r.code != 0 || len(r.stdout) < 200 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(runUsh(t, shellEnv(t, ""), "completion", "bash").stdout)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bash -n: %v\n%s", err, out)
		}
	}
	r = runUsh(t, env, "--show-config")
	if r.code != 0 || !strings.Contains(r.stdout, "client.password = <redacted>") || !strings.Contains(r.stdout, s.Addr) {
		t.Fatalf("show-config: %+v", r)
	}
}

// A shared site file with other programs' sections still configures ush.
func TestSharedConfigFile(t *testing.T) {
	set := NewConfig()
	dir := t.TempDir()
	p := dir + "/usher.toml"
	text := "[controller]\nlisten = \":7070\"\n\n[client]\naddr = \"ctl:7070\"\nca_file = \"pki/ca.pem\"\nuser = \"bob\"\ntimeout = \"5s\"\n"
	if err := writeFile(p, text); err != nil {
		t.Fatal(err)
	}
	if err := LoadConfig(set, []string{p}); err != nil {
		t.Fatal(err)
	}
	cc := ClientConfig(set)
	if cc.Addr != "ctl:7070" || cc.CAFile != dir+"/pki/ca.pem" || cc.User != "bob" || cc.CallTimeout != 5*time.Second {
		t.Fatalf("%+v", cc)
	}
	if err := writeFile(p, "[client]\nadr = \"x\"\n[lnm]\nname = \"n\"\n"); err != nil {
		t.Fatal(err)
	}
	if err := LoadConfig(NewConfig(), []string{p}); err == nil || !strings.Contains(err.Error(), "client.addr") {
		t.Fatalf("typo in [client]: %v", err)
	}
}

// Run without a terminal reads plain lines: remote commands are pending
// jobs, cached answers print at once, and the end of input waits.
func TestRunPlain(t *testing.T) {
	s := testSite(t, 2, 0)
	alice := connect(t, s, "alice")
	in := strings.NewReader("start -n web -c 2\nwait 1\nlist\nclusters\nbogus\njobs\n")
	var out syncWriter
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Run(ctx, Options{Client: alice, In: in, Out: &out}); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"<Command 1 result pending...>", "Command 1 result:", "started 2 of 2 VMs",
		"CLUSTER  VMS  MEMBERS", "web      2    web1,web2", `error: unknown command "bogus"`, "1  done"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "Command 2") {
		t.Errorf("a cached answer got a command number:\n%s", got)
	}
}

type syncWriter struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (w *syncWriter) lock() {
	if w.mu == nil {
		w.mu = make(chan struct{}, 1)
	}
	w.mu <- struct{}{}
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.lock()
	defer func() { <-w.mu }()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.lock()
	defer func() { <-w.mu }()
	return w.buf.String()
}

var _ io.Writer = (*syncWriter)(nil)
