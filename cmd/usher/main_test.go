package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := realMain(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		code, out, errOut := run(t, c.name, "--help")
		if code != 0 || !strings.Contains(out+errOut, "Usage: usher "+c.name) {
			t.Errorf("usher %s --help: exit %d\n%s%s", c.name, code, out, errOut)
		}
	}
	if code, _, errOut := run(t, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "controller", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("bad flag: %d %s", code, errOut)
	}
}

func TestConfigShowSources(t *testing.T) {
	f := filepath.Join(t.TempDir(), "usher.toml")
	os.WriteFile(f, []byte("[controller]\nlisten = \"127.0.0.1:9999\"\n"), 0o600)
	t.Setenv("USHER_CONFIG", f)
	code, out, errOut := run(t, "config", "show", "--prefix", "controller.listen")
	if code != 0 || !strings.Contains(out, `controller.listen = "127.0.0.1:9999"`) || !strings.Contains(out, f) {
		t.Fatalf("config show: %d\n%s%s", code, out, errOut)
	}
	os.WriteFile(f, []byte("[controller]\nlisen = \"x\"\n"), 0o600)
	if code, _, errOut := run(t, "config", "show"); code != 1 || !strings.Contains(errOut, `did you mean "controller.listen"`) {
		t.Fatalf("typo in config: %d %s", code, errOut)
	}
}

func TestCAAndPolicyCheck(t *testing.T) {
	dir := t.TempDir()
	if code, out, errOut := run(t, "ca", "init", "--dir", dir); code != 0 || !strings.Contains(out, "ca.crt") {
		t.Fatalf("ca init: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := run(t, "ca", "init", "--dir", dir); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("second ca init: %d %s", code, errOut)
	}
	if code, out, _ := run(t, "ca", "issue", "--dir", dir, "--role", "lnm", "--name", "node1"); code != 0 || !strings.Contains(out, "node1.crt") {
		t.Fatalf("ca issue: %d %s", code, out)
	}
	if code, _, errOut := run(t, "ca", "issue", "--dir", dir, "--role", "king", "--name", "x"); code != 1 || !strings.Contains(errOut, "unknown role") {
		t.Fatalf("bad role: %d %s", code, errOut)
	}
	all, _ := filepath.Glob("../../scripts/place_*.lua")
	var shipped []string
	for _, f := range all {
		if !strings.HasSuffix(f, "_test.lua") {
			shipped = append(shipped, f)
		}
	}
	if code, out, errOut := run(t, append([]string{"policy", "check"}, shipped...)...); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("policy check shipped: %d %s %s", code, out, errOut)
	}
	bad := filepath.Join(dir, "bad.lua")
	os.WriteFile(bad, []byte("usher.on(\"start_request\", function(req)\n  if then end\nend)\n"), 0o644)
	if code, _, errOut := run(t, "policy", "check", bad); code != 1 || !strings.Contains(errOut, "bad.lua:2") {
		t.Fatalf("policy check broken: %d %s", code, errOut)
	}
}

// The demo site end to end through the binary's own commands: demo
// --no-shell prints the client config path; plan and policy
// status/register/unregister work against it with the right identities.
func TestDemoPlanAndPolicyAdmin(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, []string{"--no-shell", "--state-dir", dir, "--lnms", "2", "--boot-delay", "0s", "--level", "error"}, pw, io.Discard)
		pw.Close()
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	var clientCfg string
	sc := bufio.NewScanner(pr)
	deadline := time.AfterFunc(60*time.Second, func() { pw.CloseWithError(io.ErrUnexpectedEOF) })
	defer deadline.Stop()
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "client config: "); ok {
			clientCfg = p
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if clientCfg == "" {
		t.Fatal("demo printed no client config line")
	}
	t.Setenv("USHER_CONFIG", clientCfg)
	code, out, errOut := run(t, "plan", "start", "-n", "web", "-c", "3")
	if code != 0 || !strings.Contains(out, "place_leastloaded") {
		t.Fatalf("plan: %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := run(t, "policy", "status"); code != 1 || !strings.Contains(errOut, "admin") {
		t.Fatalf("policy status as a user: %d %s", code, errOut)
	}
	t.Setenv("USHER_CONFIG", filepath.Join(dir, "admin.toml"))
	if code, out, errOut := run(t, "policy", "status"); code != 0 || !strings.Contains(out, "quota") {
		t.Fatalf("policy status as admin: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := run(t, "policy", "unregister", "quota", "start_request"); code != 0 || !strings.Contains(out, "unregistered") {
		t.Fatalf("unregister: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := run(t, "policy", "register", "quota", "start_request", "nope"); code != 1 {
		t.Fatalf("register of a missing handler: %d %s %s", code, out, errOut)
	}
	// Flags anywhere, as the paper writes register_plugin: the request
	// reaches the controller (which finds no such handler), it is not a
	// usage error.
	if code, out, errOut := run(t, "policy", "register", "quota", "start_request", "nope", "--order", "20"); code != 1 || !strings.Contains(errOut, `no global function "nope"`) {
		t.Fatalf("register with --order last: %d %s %s", code, out, errOut)
	}
}

// TestPolicyToolUsage: every policy subcommand has --help (exit 0); usage
// errors exit 2; check takes globs and checks *_test.lua files as tests.
func TestPolicyToolUsage(t *testing.T) {
	for _, sub := range []string{"check", "test", "status", "register", "unregister"} {
		if code, _, errOut := run(t, "policy", sub, "--help"); code != 0 || !strings.Contains(errOut, "Usage: usher policy "+sub) {
			t.Errorf("policy %s --help: %d %s", sub, code, errOut)
		}
	}
	for _, args := range [][]string{{"policy", "check"}, {"policy", "test"}, {"policy", "frobnicate"}, {"policy", "check", "--bogus", "x.lua"}, {"policy", "register", "quota"}, {"policy", "status", "extra"}} {
		if code, _, errOut := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d (want 2) %s", args, code, errOut)
		}
	}
	code, out, errOut := run(t, "policy", "check", "../../scripts/place_*.lua")
	if code != 0 || !strings.Contains(out, "test file(s) OK") || strings.HasPrefix(out, "0 script") || strings.Contains(out, " 0 test") {
		t.Fatalf("policy check of a glob with tests: %d %s %s", code, out, errOut)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x_test.lua"), []byte("usher_test.case(\"broken\", function()\n  if then end\nend)\n"), 0o644)
	if code, _, errOut := run(t, "policy", "check", filepath.Join(dir, "*.lua")); code != 1 || !strings.Contains(errOut, "x_test.lua") {
		t.Fatalf("a broken test file: %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "policy", "check", filepath.Join(dir, "nothing*.lua")); code != 1 || !strings.Contains(errOut, "no such files") {
		t.Fatalf("a glob matching nothing: %d %s", code, errOut)
	}
}
