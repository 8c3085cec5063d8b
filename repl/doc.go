// Package repl is ush, the Usher shell: the interactive and scriptable
// client users drive their virtual clusters with (the paper's "ush").
//
// # What this room is for
//
// It turns command lines into calls of the client API and the answers
// into text or JSON:
//
//   - [Run] is the interactive shell. On a terminal it edits lines with
//     github.com/peterh/liner (persistent history, tab completion of
//     commands, options, VM names from the cache, clusters and LNMs).
//     As in the paper calls are asynchronous: a command that asks the
//     controller prints "<Command N result pending...>" and, when the
//     answer arrives, "Command N result: …"; jobs and wait N follow them.
//     Answers the client already holds in its cache (list of one's own
//     VMs, clusters, whoami) print at once without a remote call. Pushed
//     notifications and late results are printed above the line being
//     typed: the line is cleared, the message printed, and liner is made
//     to redraw prompt and text by a SIGWINCH the shell sends itself.
//     Without a terminal Run reads plain lines (scripts, tests).
//   - [Exec] runs one command synchronously and reports any failure,
//     including partial ones, as an error; --json prints core's types
//     with their JSON tags.
//   - [Main] is the ush binary: flags, the [client] section of the
//     configuration files (config.DefaultPaths, $USHER_CONFIG), the
//     password prompt, -c, completion scripts for bash and zsh.
//
// # What this room may touch
//
// Only the public client package (github.com/usher-vm/usher/client),
// core's types and constants, and core/config for the client parameters.
// It never imports transport, the controller's internals, nodemgr or lua:
// everything it does goes through a *client.Client, so ush can do
// nothing a third-party client could not. Its tests may start an
// embedded site (package usher) and build cmd/ush.
package repl
