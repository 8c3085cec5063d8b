package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, out, errOut io.Writer) error
}

func commands() []command {
	return []command{
		{"controller", "run the central controller", runController},
		{"lnm", "run a local node manager on this host", runLNM},
		{"demo", "run an embedded site (controller + simulated LNMs + shipped policies) and open the shell", runDemo},
		{"ca", "create a site CA and issue controller/LNM certificates", runCA},
		{"etcd", "run an embedded etcd member (for highly available controllers)", runEtcd},
		{"config", "show the effective configuration and where each value came from", runConfig},
		{"policy", "check, test, inspect and (un)register Lua policy scripts", runPolicy},
		{"plan", "dry-run a request through the live policy chain and show the decision trace", runPlan},
		{"sim", "inject faults into a simulated hypervisor's state file", runSim},
		{"bench", "measure the controller at cluster scale (start-storm, steady, recovery, requests, chain, reload)", runBench},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usher — manage clusters of virtual machines (LISA '07 Usher, in Go)

Usage: usher COMMAND [flags]

Commands:`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, `
Configuration is read from /etc/usher/usher.toml, then the user's config
folder (usher/usher.toml), then the file named by $USHER_CONFIG; flags win.
Run 'usher COMMAND --help' for a command's flags, 'usher config show' for
every parameter.`)
}

// errUsage marks an error already explained to the user (exit 2).
var errUsage = errors.New("usage")

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(out)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], out, errOut)
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			default:
				fmt.Fprintf(errOut, "usher %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	names := make([]string, 0)
	for _, c := range commands() {
		names = append(names, c.name)
	}
	sort.Strings(names)
	fmt.Fprintf(errOut, "usher: unknown command %q (commands: %s)\n", args[0], strings.Join(names, ", "))
	return 2
}

// newFlags builds a flag set whose --help prints a description first.
func newFlags(name, synopsis, description string, errOut io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("usher "+name, flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: usher %s %s\n\n%s\n\nFlags:\n", name, synopsis, description)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, mapping a parse error to errUsage (flag already
// printed it).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// parseInterleaved parses flags wherever they stand among the positional
// arguments (usher policy register SCRIPT EVENT HANDLER --order N, as
// well as --order N first) and returns the positional ones. After "--"
// everything is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		rest := args
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if len(rest) > len(args) && rest[len(rest)-len(args)-1] == "--" {
			return append(pos, args...), nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

func logger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format %q: want text or json", format)
}
