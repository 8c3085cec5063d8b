package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/site"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/lua/policytool"
	"github.com/usher-vm/usher/nodemgr/sim"
	"github.com/usher-vm/usher/repl"
	"github.com/usher-vm/usher/transport"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func runCA(ctx context.Context, args []string, out, errOut io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(out, `Usage: usher ca init --dir DIR [--name NAME]
       usher ca issue --dir DIR --role controller|lnm --name NAME [--host H]... [--out DIR]

init creates the site CA (ca.crt, ca.key with mode 0600) in DIR.
issue signs a certificate: role controller for the controller's TLS server
(--host for each DNS name or IP clients dial), role lnm for a node (its
name is the node name it may register as; LNM certificates are client-only
and can never pose as the controller).

Example:
  usher ca init --dir /etc/usher/pki
  usher ca issue --dir /etc/usher/pki --role controller --name ctl --host ctl.example.org --host 10.0.0.1
  usher ca issue --dir /etc/usher/pki --role lnm --name node1`)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	switch args[0] {
	case "init":
		fs := newFlags("ca init", "--dir DIR", "Creates a new site CA.", errOut)
		dir := fs.String("dir", "", "directory for ca.crt and ca.key")
		name := fs.String("name", "Usher site CA", "CA common name")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			return fmt.Errorf("--dir is required")
		}
		if _, err := transport.CreateCA(*dir, *name); err != nil {
			return err
		}
		fmt.Fprintf(out, "CA created: %s\n", filepath.Join(*dir, transport.CACertFile))
		return nil
	case "issue":
		fs := newFlags("ca issue", "--dir DIR --role ROLE --name NAME", "Issues a controller or LNM certificate signed by the site CA.", errOut)
		dir := fs.String("dir", "", "CA directory")
		role := fs.String("role", "", "controller or lnm")
		name := fs.String("name", "", "certificate name (for lnm: the node name)")
		outDir := fs.String("out", "", "where to write NAME.crt and NAME.key (default: the CA directory)")
		var hosts multi
		fs.Var(&hosts, "host", "DNS name or IP the certificate serves under (repeatable): the controller's; for an LNM, besides its name, for its metrics")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" || *role == "" || *name == "" {
			return fmt.Errorf("--dir, --role and --name are required")
		}
		ca, err := transport.LoadCA(*dir)
		if err != nil {
			return err
		}
		if *outDir == "" {
			*outDir = *dir
		}
		if *role == transport.RoleController && len(hosts) == 0 {
			hosts = multi{"localhost", "127.0.0.1"}
		}
		c, k, err := ca.Issue(*role, *name, hosts, *outDir)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "certificate: %s\nkey: %s\n", c, k)
		return nil
	}
	return fmt.Errorf("unknown ca command %q (init, issue)", args[0])
}

func runConfig(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := newFlags("config", "show [--prefix P]", `Shows every configuration parameter's effective value and its source
(default, a file, env or flag). Files are read in order: /etc/usher/usher.toml,
the user's config folder (usher/usher.toml), then $USHER_CONFIG.

Example:
  usher config show --prefix controller.`, errOut)
	prefix := fs.String("prefix", "", "only keys starting with this")
	if len(args) == 0 || args[0] != "show" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fs.Usage()
			return nil
		}
		fs.Usage()
		return errUsage
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg := site.Params()
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return err
	}
	if err := cfg.LoadEnv("USHER"); err != nil {
		return err
	}
	cfg.Show(out, *prefix)
	return nil
}

func runSim(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := newFlags("sim", "crash|vanish|appear --state FILE VM", `Injects a fault into a simulated hypervisor through its state file, as if
it happened on a real host: crash (the VM crashes), vanish (it disappears
behind Usher's back), appear (a VM started outside Usher). The LNM running
that hypervisor notices on its next look.

Example:
  usher sim crash --state /tmp/usher-demo/sim/node1.json web1.demo.usher.local`, errOut)
	state := fs.String("state", "", "the simulated hypervisor's state file")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fs.Usage()
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	action := args[0]
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *state == "" || fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	if err := sim.Inject(*state, action, fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %s\n", action, fs.Arg(0))
	return nil
}

func runPolicy(ctx context.Context, args []string, out, errOut io.Writer) error {
	help := `Usage: usher policy check FILE...
       usher policy test DIR
       usher policy status
       usher policy register SCRIPT EVENT HANDLER [--order N]
       usher policy unregister SCRIPT EVENT

check compiles each script and validates its registrations without a controller.
test runs the *_test.lua files in DIR against fixture state.
status asks the running controller (client configuration) for loaded scripts,
their hashes, last errors and per-handler call counts and latency (admins).

Example:
  usher policy check /etc/usher/policies/place_night.lua
  usher policy test /etc/usher/policies`
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(out, help)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	switch args[0] {
	case "check":
		fs := newFlags("policy check", "FILE|GLOB...", `Compiles each policy script and validates its registrations (event names,
intervals, handler names) without a controller. Arguments may be globs
(quote them); *_test.lua files among them are checked as tests: compiled,
not run as policies (usher policy test runs them).

Example:
  usher policy check /etc/usher/policies/place_night.lua
  usher policy check '/etc/usher/policies/*.lua'`, errOut)
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			fs.Usage()
			return errUsage
		}
		var scripts, tests []string
		for _, a := range fs.Args() {
			files := []string{a}
			if strings.ContainsAny(a, "*?[") {
				m, err := filepath.Glob(a)
				if err != nil || len(m) == 0 {
					return fmt.Errorf("%s: no such files", a)
				}
				files = m
			}
			for _, f := range files {
				if strings.HasSuffix(f, "_test.lua") {
					tests = append(tests, f)
				} else {
					scripts = append(scripts, f)
				}
			}
		}
		var errs []error
		if len(scripts) > 0 {
			errs = policytool.Check(scripts)
		}
		errs = append(errs, policytool.CheckTests(tests)...)
		for _, e := range errs {
			fmt.Fprintln(errOut, e)
		}
		if len(errs) > 0 {
			return fmt.Errorf("%d problem(s)", len(errs))
		}
		fmt.Fprintf(out, "%d script(s) and %d test file(s) OK\n", len(scripts), len(tests))
		return nil
	case "test":
		fs := newFlags("policy test", "DIR", `Runs every *_test.lua file of DIR against fixture state (docs/lua-api.md,
"Testing policies") and prints each case and a summary.

Example:
  usher policy test /etc/usher/policies`, errOut)
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return errUsage
		}
		_, failed, err := policytool.RunTests(fs.Arg(0), out) // it prints the summary
		if err != nil {
			return err
		}
		if failed > 0 {
			return fmt.Errorf("%d test(s) failed", failed)
		}
		return nil
	case "status":
		fs := newFlags("policy status", "", `Asks the running controller (client configuration, an admin's) for the
loaded scripts, their hashes, last errors and per-handler call counts and
latency, as JSON.`, errOut)
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			fs.Usage()
			return errUsage
		}
		c, err := dialFromConfig(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		rep, err := c.Policy(ctx, policyStatusArgs())
		if err != nil {
			return err
		}
		b, _ := json.MarshalIndent(rep.Scripts, "", "  ")
		fmt.Fprintln(out, string(b))
		return nil
	case "register", "unregister":
		fs := newFlags("policy "+args[0], "SCRIPT EVENT [HANDLER]", `register puts a script's global function HANDLER on EVENT's chain at
--order (the paper's register_plugin); unregister takes a script's
handlers off EVENT (unregister_plugin). Needs an admin client config.

Example:
  usher policy register place_pack start_request place --order 50
  usher policy unregister place_leastloaded start_request`, errOut)
		order := fs.Int("order", 50, "position in the chain (lower runs first)")
		pos, err := parseInterleaved(fs, args[1:])
		if err != nil {
			return err
		}
		want := 3
		if args[0] == "unregister" {
			want = 2
		}
		if len(pos) != want {
			fs.Usage()
			return errUsage
		}
		c, err := dialFromConfig(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		a := api.PolicyArgs{Action: args[0], Script: pos[0], Event: pos[1], Order: *order}
		if want == 3 {
			a.Handler = pos[2]
		}
		if _, err := c.Policy(ctx, a); err != nil {
			return err
		}
		fmt.Fprintf(out, "%sed %s on %s\n", args[0], pos[0], pos[1])
		return nil
	}
	fmt.Fprintf(errOut, "usher policy: unknown command %q (check, test, status, register, unregister; usher policy --help)\n", args[0])
	return errUsage
}

func runPlan(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := newFlags("plan", "[--json] start ARGS | OP VMSET | migrate VMSET LNMSET", `Dry-runs a request through the live policy chain of the controller named
by the client configuration and prints the decision trace: which handler
approved, trimmed, placed or rejected what, and why. Nothing changes.

Examples:
  usher plan start -n web -c 5 image=debian
  usher plan pause web[1-2]
  USHER_CONFIG=/tmp/usher-demo/client.toml usher plan --json migrate web1 node3`, errOut)
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	c, err := dialFromConfig(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return repl.Exec(ctx, c, "plan "+strings.Join(fs.Args(), " "), *jsonOut, out)
}
