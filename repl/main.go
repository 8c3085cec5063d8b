package repl

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
	"time"

	"github.com/peterh/liner"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core/config"
)

// Main is the whole ush binary; it returns the exit status.
func Main(args []string) int {
	return mainWith(args, os.Stdin, os.Stdout, os.Stderr)
}

type mainFlags struct {
	fs         *flag.FlagSet
	cmd        *string
	json       *bool
	configFile *string
	showConfig *bool
	set        *config.Set
}

func newFlags(stderr io.Writer) *mainFlags {
	fs := flag.NewFlagSet("ush", flag.ContinueOnError)
	fs.SetOutput(stderr)
	m := &mainFlags{fs: fs, set: NewConfig()}
	m.cmd = fs.String("c", "", "run this one command synchronously and exit (status 1 on any failure)")
	m.json = fs.Bool("json", false, "print results as JSON (stable field names, for scripts)")
	m.configFile = fs.String("config", "", "read this configuration file after the default ones")
	m.showConfig = fs.Bool("show-config", false, "print the effective client configuration and where each value came from, then exit")
	m.set.BindFlags(fs, "client.")
	return m
}

func mainWith(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	m := newFlags(stderr)
	m.fs.Usage = func() {} // errors are reported below; --help prints to stdout
	if err := m.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage(m.fs))
			return 0
		}
		errorf(stderr, "see ush --help")
		return 2
	}
	rest := m.fs.Args()
	if len(rest) > 0 {
		switch rest[0] {
		case "completion":
			if len(rest) != 2 {
				errorf(stderr, "usage: ush completion bash|zsh")
				return 2
			}
			switch rest[1] {
			case "bash":
				fmt.Fprint(stdout, bashCompletion(m.fs))
			case "zsh":
				fmt.Fprint(stdout, zshCompletion(m.fs))
			default:
				errorf(stderr, "completion: unknown shell %q (bash or zsh)", rest[1])
				return 2
			}
			return 0
		case "help":
			if len(rest) == 1 {
				fmt.Fprint(stdout, usage(m.fs))
				return 0
			}
			c := lookup(rest[1])
			if c == nil {
				errorf(stderr, "help: no command %q", rest[1])
				return 2
			}
			fmt.Fprintln(stdout, helpCommand(c))
			return 0
		}
	}
	paths := config.DefaultPaths()
	if *m.configFile != "" {
		paths = append(paths, *m.configFile)
	}
	if err := LoadConfig(m.set, paths); err != nil {
		errorf(stderr, "%v", err)
		return 2
	}
	if err := m.set.ApplyFlags(m.fs); err != nil {
		errorf(stderr, "%v", err)
		return 2
	}
	if *m.showConfig {
		m.set.Show(stdout, "client.")
		return 0
	}
	line := *m.cmd
	if line == "" && len(rest) > 0 {
		line = joinWords(rest)
	}
	oneShot := line != ""
	// fail fast on a malformed one-shot command, before connecting
	if oneShot {
		if words, err := tokenize(line); err != nil {
			errorf(stderr, "%v", err)
			return 2
		} else if len(words) > 0 && lookup(words[0]) == nil {
			errorf(stderr, "unknown command %q (see ush --help)", words[0])
			return 2
		}
	}

	cc := ClientConfig(m.set)
	cc.Logger = slog.New(slog.DiscardHandler)
	if cc.Password == "" {
		if !isTerminal(0) || !isTerminal(1) {
			errorf(stderr, "no password: set client.password in the configuration or --password, or run ush on a terminal to be asked")
			return 2
		}
		ln := liner.NewLiner()
		pw, err := ln.PasswordPrompt(fmt.Sprintf("Password for %s at %s: ", cc.User, cc.Addr))
		ln.Close()
		if err != nil {
			errorf(stderr, "reading password: %v", err)
			return 2
		}
		cc.Password = pw
	}
	if oneShot {
		cc.NoReconnect = true
	}
	dial := func(ctx context.Context) (*client.Client, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return client.Connect(ctx, cc)
	}

	if oneShot {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		c, err := dial(ctx)
		if err != nil {
			errorf(stderr, "connecting to %s: %v", cc.Addr, err)
			return 1
		}
		defer c.Close()
		if err := execLine(ctx, c, cc.Addr, line, *m.json, stdin, stdout); err != nil {
			errorf(stderr, "%v", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	c, err := dial(ctx)
	if err != nil {
		errorf(stderr, "connecting to %s: %v (the shell starts unconnected; use connect)", cc.Addr, err)
		c = nil
	}
	o := Options{In: stdin, Out: stdout, HistoryFile: expandHome(m.set.String("client.history_file")),
		Dial: dial, Addr: cc.Addr, Own: true}
	if c != nil {
		o.Client = c
		fmt.Fprintf(stdout, "connected to %s as %s; %d VMs cached. help lists the commands.\n", cc.Addr, c.Identity().User, len(c.VMs()))
	}
	if err := Run(ctx, o); err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	return 0
}

// joinWords quotes words so tokenize gives them back.
func joinWords(ws []string) string {
	out := make([]string, len(ws))
	for i, w := range ws {
		if w == "" || strings.ContainsAny(w, " \t'\"\\") {
			out[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		} else {
			out[i] = w
		}
	}
	return strings.Join(out, " ")
}

func flagDefaults(fs *flag.FlagSet) string {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		name, u := flag.UnquoteUsage(f)
		left := "  --" + f.Name
		if f.Name == "c" {
			left = "  -c"
		}
		if name != "" {
			left += " " + name
		}
		fmt.Fprintf(&b, "%-26s %s\n", left, u)
	})
	return b.String()
}

func usage(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString(`ush — the Usher shell

Usage:
  ush [flags]                       interactive shell
  ush [flags] -c 'COMMAND ARGS'     run one command and exit
  ush [flags] COMMAND ARGS...       the same, without quoting
  ush completion bash|zsh           print a shell completion script
  ush help [COMMAND]                this text, or one command in detail

ush talks to an Usher controller through the client API: it starts,
controls and migrates your VMs and shows their state. Commands that ask
the controller run asynchronously in the shell ("<Command N result
pending...>", then "Command N result: ..."); answers the client holds in
its cache (list of your VMs, clusters, whoami) print at once. Changes
pushed by the controller (a VM changed state, migrated, was lost) are
printed above the prompt as they happen. With -c the command runs
synchronously and the exit status says whether it fully succeeded.

Configuration:
  The [client] section of /etc/usher/usher.toml, ~/.config/usher/usher.toml
  and $USHER_CONFIG (in that order; flags win), for example:

    [client]
    addr = "ctl.example.org:7070"
    ca_file = "/etc/usher/pki/ca.pem"
    server_name = "controller"
    user = "alice"
    password = "…"          # omit to be asked without echo

Flags:
`)
	b.WriteString(flagDefaults(fs))
	b.WriteString("\n")
	b.WriteString(helpIndex())
	b.WriteString(`

Examples:
  ush                                   # interactive
  ush -c 'start -n web -c 3'            # start three VMs, exit 1 unless all started
  ush -c 'list --status' --json | jq .  # usage figures for scripts
  ush pause 'web[1-2]'
  USHER_CONFIG=./demo/ush.toml ush -c whoami

Exit status: 0 success; 1 the command failed or only partly succeeded
(what was done is printed); 2 usage or configuration error.
`)
	return b.String()
}

func flagNames(fs *flag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "c" {
			out = append(out, "-c")
		} else {
			out = append(out, "--"+f.Name)
		}
	})
	sort.Strings(out)
	return out
}

func bashCompletion(fs *flag.FlagSet) string {
	var cases strings.Builder
	for _, c := range commands {
		var opts []string
		for _, o := range c.opts {
			opts = append(opts, "--"+o.long)
		}
		opts = append(opts, "--json")
		names := append([]string{c.name}, c.aliases...)
		extra := ""
		switch c.name {
		case "help":
			extra = " " + strings.Join(commandNames(), " ")
		case "plan":
			extra = " " + strings.Join(planTargets(), " ")
		case "policy":
			extra = " status"
		}
		fmt.Fprintf(&cases, "      %s) words=\"%s%s\";;\n", strings.Join(names, "|"), strings.Join(opts, " "), extra)
	}
	return fmt.Sprintf(`# bash completion for ush — generated by "ush completion bash".
# Load it with:  source <(ush completion bash)
_ush() {
  local cur prev cmd i words
  cur="${COMP_WORDS[COMP_CWORD]}"
  prev="${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
    -c|--c) COMPREPLY=( $(compgen -W "%[1]s" -- "$cur") ); return 0;;
    --config|-config|--ca-file|-ca-file|--history-file|-history-file) COMPREPLY=( $(compgen -f -- "$cur") ); return 0;;
    completion) COMPREPLY=( $(compgen -W "bash zsh" -- "$cur") ); return 0;;
  esac
  cmd=""
  for ((i=1; i<COMP_CWORD; i++)); do
    case "${COMP_WORDS[i]}" in
      -c|--config|-config|--addr|--ca-file|--server-name|--user|--password|--cluster|--history-file|--timeout) i=$((i+1));;
      -*) ;;
      *) cmd="${COMP_WORDS[i]}"; break;;
    esac
  done
  if [[ -z "$cmd" ]]; then
    if [[ "$cur" == -* ]]; then
      COMPREPLY=( $(compgen -W "%[2]s" -- "$cur") )
    else
      COMPREPLY=( $(compgen -W "%[1]s completion" -- "$cur") )
    fi
    return 0
  fi
  case "$cmd" in
%[3]s      *) words="";;
  esac
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
complete -F _ush ush
`, strings.Join(commandNames(), " "), strings.Join(flagNames(fs), " "), cases.String())
}

func zshQuote(s string) string {
	s = strings.ReplaceAll(s, "'", "'\\''")
	s = strings.ReplaceAll(s, "[", "\\[")
	s = strings.ReplaceAll(s, "]", "\\]")
	s = strings.ReplaceAll(s, ":", "\\:")
	return s
}

func zshCompletion(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString(`#compdef ush
# zsh completion for ush — generated by "ush completion zsh".
# Load it with:  source <(ush completion zsh)   or save it as _ush in $fpath.
_ush() {
  local -a cmds
  cmds=(
`)
	for _, c := range commands {
		for _, n := range append([]string{c.name}, c.aliases...) {
			fmt.Fprintf(&b, "    '%s:%s'\n", n, zshQuote(c.summary))
		}
	}
	b.WriteString("    'completion:print a shell completion script'\n  )\n  local curcontext=\"$curcontext\" state line\n  _arguments -C \\\n")
	fs.VisitAll(func(f *flag.Flag) {
		name, u := flag.UnquoteUsage(f)
		flagName := "--" + f.Name
		if f.Name == "c" {
			flagName = "-c"
		}
		spec := fmt.Sprintf("'%s[%s]", flagName, zshQuote(u))
		if name != "" || f.Name == "c" {
			if f.Name == "c" {
				name = "command"
			}
			spec += ":" + zshQuote(name) + ":"
			if strings.HasSuffix(f.Name, "file") || f.Name == "config" {
				spec += "_files"
			}
		}
		fmt.Fprintf(&b, "    %s' \\\n", spec)
	})
	b.WriteString(`    '1:command:->cmd' \
    '*::arg:->args'
  case $state in
    cmd) _describe 'ush command' cmds ;;
    args)
      case $line[1] in
        completion) _values 'shell' bash zsh ;;
`)
	for _, c := range commands {
		var vals []string
		for _, o := range c.opts {
			vals = append(vals, fmt.Sprintf("'--%s[%s]'", o.long, zshQuote(o.help)))
		}
		vals = append(vals, "'--json[print the result as JSON]'")
		names := append([]string{c.name}, c.aliases...)
		fmt.Fprintf(&b, "        %s) _values -w 'option' %s ;;\n", strings.Join(names, "|"), strings.Join(vals, " "))
	}
	b.WriteString(`      esac ;;
  esac
}
if [[ "${funcstack[1]}" == "_ush" ]]; then
  _ush "$@"
else
  compdef _ush ush
fi
`)
	return b.String()
}
