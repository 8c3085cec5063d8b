package repl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/client"
)

// command is one shell command.
type command struct {
	name    string
	aliases []string
	usage   string // synopsis after the name
	summary string
	doc     string // long help, with examples
	opts    []opt
	pos     []argKind // what each positional word completes to; the last repeats
	raw     bool      // no option parsing: words go to the command (plan)
	run     func(ctx context.Context, s *session, line string, a *parsed) (*step, error)
}

var commands []*command

func init() {
	commands = []*command{
		{name: "list", usage: "[-s|--status] [-a|--all] [--lists] [-n CLUSTER] [VMSET]",
			summary: "list your VMs (from the cache unless --status, --all or --lists)",
			doc: `Lists VMs with their cluster, state, node, memory and vCPUs.

Without --status, --all or --lists the answer comes from the client's
cache of your VM objects, which pushed events keep current, so it is
printed at once without asking the controller. --status asks the
controller for the 1/5/15-minute usage averages reported by the LNMs;
--all lists everyone's VMs where the policy allows it (admins);
--lists adds the lost, missing and unmanaged lists (admins).

Examples:
  list
  list web
  list -n web --status
  list /db[0-9]+/
  list -a --lists`,
			opts: []opt{
				{long: "status", short: "s", help: "ask the controller for usage figures"},
				{long: "all", short: "a", help: "everyone's VMs (where policy allows)"},
				{long: "lists", help: "also the lost, missing and unmanaged lists"},
				{long: "cluster", short: "n", arg: "CLUSTER", help: "only this virtual cluster", kind: argCluster},
			},
			pos: []argKind{argVMSet}, run: cmdList},
		{name: "list_lnms", aliases: []string{"lnms"}, usage: "[-s|--status] [LNMSET]",
			summary: "list the local node managers (physical nodes)",
			doc: `Lists the LNMs the controller knows: connection state, address,
capacity, VMs and free resources. --status adds the node's usage
averages.

Examples:
  list_lnms
  list_lnms --status node[1-3]`,
			opts: []opt{{long: "status", short: "s", help: "include usage averages"}},
			pos:  []argKind{argLNMSet}, run: cmdListLNMs},
		{name: "clusters", usage: "[-a|--all]", summary: "list virtual clusters",
			doc: `Lists your virtual clusters and their VMs (from the cache). --all asks
the controller for everyone's clusters (admins).

Examples:
  clusters
  clusters -a`,
			opts: []opt{{long: "all", short: "a", help: "everyone's clusters (admins)"}},
			run:  cmdClusters},
		{name: "start", usage: "-n CLUSTER -c COUNT [--on LNMSET] [--mem MB] [--vcpus N] [--names N1,N2] [key=value...]",
			summary: "start new VMs in a virtual cluster",
			doc: `Asks the controller for COUNT new VMs in virtual cluster CLUSTER. They
are named CLUSTER1, CLUSTER2, … (or --names) and placed by the site's
policy, on the suggested LNMs if --on is given. key=value arguments are
passed to the policies (StartArgs.Args), for example an image name.
The result says exactly which VMs started where, and which the policy
dropped and why.

Examples:
  start -n web -c 3
  start -n db -c 2 --on node[1-2] --mem 1024 --vcpus 2
  start -n batch -c 10 image=debian12 priority=low`,
			opts: []opt{
				{long: "cluster", short: "n", arg: "CLUSTER", help: "virtual cluster name", kind: argCluster},
				{long: "count", short: "c", arg: "COUNT", help: "how many VMs"},
				{long: "on", arg: "LNMSET", help: "suggested LNMs", kind: argLNMSet},
				{long: "mem", short: "m", arg: "MB", help: "memory per VM (MiB)"},
				{long: "vcpus", arg: "N", help: "vCPUs per VM"},
				{long: "names", arg: "N1,N2", help: "explicit short names instead of a count"},
			},
			run: cmdStart},
	}
	opDocs := map[api.Op][2]string{
		api.OpPause:     {"pause running VMs (memory stays resident)", "Pauses the execution of the VMs of VMSET; their memory stays resident and resume continues them."},
		api.OpResume:    {"resume paused VMs", "Resumes the paused VMs of VMSET."},
		api.OpShutdown:  {"shut VMs down gracefully", "Asks the guests of VMSET to shut down; the VMs stay defined (state shutoff)."},
		api.OpReboot:    {"reboot VMs", "Reboots the VMs of VMSET."},
		api.OpHibernate: {"save VMs' memory to storage and stop them", "Saves the memory of the VMs of VMSET to storage and stops them; restore brings them back."},
		api.OpRestore:   {"restore hibernated VMs", "Brings the hibernated VMs of VMSET back to running."},
		api.OpDestroy:   {"hard-stop and remove VMs", "Hard-stops the VMs of VMSET and removes them; they are gone from your list."},
		api.OpCycle:     {"destroy and restart VMs (power cycle)", "Power-cycles the VMs of VMSET: destroys and starts them again with the same names."},
	}
	for _, op := range api.Ops() {
		op := op
		commands = append(commands, &command{name: string(op), usage: "VMSET [key=value...]",
			summary: opDocs[op][0],
			doc: fmt.Sprintf(`%s

VMSET names VMs among yours (checked against the client's cache before
anything is sent): short names (web1), short.owner or full names,
ranges (web[1-3,7]), regular expressions (/web[0-9]+/), cluster names
(web or @web), separated by commas or spaces. key=value arguments go
to the policies. The result lists each VM's outcome.

Examples:
  %s web1
  %s web[1-3]
  %s /db.*/ @batch`, opDocs[op][1], op, op, op),
			pos: []argKind{argVMSet},
			run: func(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
				return cmdOp(ctx, s, op, a)
			}})
		if op == api.OpShutdown || op == api.OpReboot {
			c := commands[len(commands)-1]
			c.usage = "[--force] VMSET [key=value...]"
			c.opts = []opt{{long: "force", short: "f", help: "a guest that does not comply in time is stopped or reset hard"}}
			c.doc += "\n  " + string(op) + " --force web1"
		}
	}
	commands = append(commands,
		&command{name: "migrate", usage: "VMSET LNMSET", summary: "live-migrate VMs to other nodes",
			doc: `Moves the VMs of VMSET to the LNMs of LNMSET (a suggestion the
placement policy may refine). LNMSET takes names, ranges and /regex/.

Examples:
  migrate web1 node2
  migrate web[1-4] node[3-4]
  migrate @db /node[0-9]/`,
			pos: []argKind{argVMSet, argLNMSet}, run: cmdMigrate},
		&command{name: "lnm", usage: "isolate|drain|restore LNMSET [--reason TEXT]",
			summary: "take nodes out of service and back (admins)",
			doc: `Changes the mode of the nodes of LNMSET (admins):
  isolate  nothing new is placed there; its VMs stay and keep running
  drain    nothing new is placed there and its VMs leave (the drain
           policy, scripts/drain.lua: live migration, or per VM the
           strategy in its data "drain": migrate, shutdown, stop); once no
           VM takes its resources it is in maintenance and may be powered
           off or removed
  restore  back to active: new VMs may be placed there again (cancels a
           drain; the VMs that left stay where they went)
The mode survives controller restarts. lnms shows it with the drain's
progress; watch shows lnm_mode events. See docs/maintenance.md.

Examples:
  lnm isolate node3 --reason "disk errors"
  lnm drain node[1-2] --reason "kernel update"
  lnm restore node[1-2]`,
			opts: []opt{{long: "reason", arg: "TEXT", help: "why (shown by lnms and in the event)"}},
			pos:  []argKind{argNone, argLNMSet}, run: cmdLNMMode},
		&command{name: "reserve", usage: "[list] [--all] | create --user USER [--cluster C] [--mem MB] [--vcpus N] [--on LNMSET] [--start TIME] (--for DURATION | --until TIME) [--on-end shutdown|destroy] | extend ID (--for DURATION | --until TIME) | cancel ID",
			summary: "reservations: resources held for a user on nodes until a time",
			doc: `A reservation holds memory and vCPUs on each of some nodes for one
user (optionally one virtual cluster) from a start (default now) to an
end. While it is active nothing else is placed in what it holds; its
owner starts VMs in it with "start … reservation=ID" (the reservations
policy). When it ends its VMs are shut down (or destroyed, --on-end
destroy). Admins create reservations; owners list theirs, extend them
(as policy allows) and cancel them. TIME is RFC 3339
(2026-12-24T08:00:00Z); DURATION is like 90m or 8h. Without --on the
controller picks one node with room for it now. See docs/maintenance.md.

Examples:
  reserve create --user alice --mem 8192 --vcpus 4 --on node[1-2] --for 8h
  reserve
  start -n job -c 4 --mem 2048 --vcpus 1 reservation=r-3f9a0c11d2e4
  reserve extend r-3f9a0c11d2e4 --for 2h
  reserve cancel r-3f9a0c11d2e4`,
			opts: []opt{{long: "all", short: "a", help: "everyone's (admins)"}, {long: "user", arg: "USER", help: "create: whom it is for"},
				{long: "cluster", short: "n", arg: "CLUSTER", help: "create: only this virtual cluster of the user", kind: argCluster},
				{long: "mem", arg: "MB", help: "create: memory held on each node"}, {long: "vcpus", arg: "N", help: "create: vCPUs held on each node"},
				{long: "on", arg: "LNMSET", help: "create: the nodes (default: one with room)", kind: argLNMSet},
				{long: "start", arg: "TIME", help: "create: when it starts (default now)"},
				{long: "for", arg: "DURATION", help: "create: how long; extend: how much longer"},
				{long: "until", arg: "TIME", help: "create, extend: when it ends"},
				{long: "on-end", arg: "ACTION", help: "create: shutdown (default) or destroy its VMs at the end"}},
			run: cmdReserve},
		&command{name: "forget", usage: "VMSET", summary: "remove the records of missing or lost VMs",
			doc: `Removes the controller's records of the VMs of VMSET that are missing
(gone from their node) or lost (their node failed): their capacity is
given back and their node, if connected, drops its cached object. A VM
a node still runs is refused: destroy it instead. Owners forget their
own VMs, admins anyone's (as the authorization policy allows).

Examples:
  forget web3
  forget @batch`,
			pos: []argKind{argVMSet}, run: cmdForget},
		&command{name: "images", summary: "list the images VMs can start from (start … image=NAME)",
			doc: `Lists the base images of the site's image store: name, format, how it
boots (kernel: direct kernel boot; disk: from its own boot loader), the
memory it needs and its description. A VM started with image=NAME boots
from its own copy-on-write overlay of the image, which is removed when
the VM is destroyed. Admins also see metadata files that describe no
usable image.

Examples:
  images
  start -n web -c 3 image=debian-small`,
			run: cmdImages},
		&command{name: "keys", usage: "[list] | add KEY|FILE | remove KEY|FINGERPRINT|COMMENT [--user USER]",
			summary: "manage the SSH public keys installed in your new VMs",
			doc: `Registers SSH public keys with the controller. Every VM you start
afterwards gets them (cloud-init seed) for its login user, so that
"ssh root@web1.<you>.<domain>" works once it has booted. add takes an
authorized_keys line or the path of a .pub file; remove takes the key,
its fingerprint (SHA256:…) or its comment. Admins may manage another
user's keys with --user. Keys already given to running VMs stay there.

Examples:
  keys
  keys add ~/.ssh/id_ed25519.pub
  keys add ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… alice@laptop
  keys remove SHA256:0d3Jp…
  keys list --user alice`,
			opts: []opt{{long: "user", arg: "USER", help: "another user's keys (admins)"}},
			run:  cmdKeys},
		&command{name: "token", usage: "[list] | create [--name NAME] [--expires DURATION] | revoke ID [--user USER]",
			summary: "manage API tokens for the HTTP API",
			doc: `API tokens let scripts and other systems use the HTTP API without
your password: "Authorization: Bearer TOKEN". A token stands for you as
you are now (your groups, admin or not) until it is revoked or expires.
create prints the token once: keep it, it cannot be shown again (only a
hash is kept). A token cannot make tokens. Admins may list and revoke
another user's with --user.

Examples:
  token create --name ci --expires 720h
  token list
  token revoke 3f9a1c0b7e21`,
			opts: []opt{{long: "name", arg: "NAME", help: "what the token is for"},
				{long: "expires", arg: "DURATION", help: "lifetime, e.g. 720h (default: until revoked)"},
				{long: "user", arg: "USER", help: "another user's tokens (admins; list and revoke)"}},
			run: cmdToken},
		&command{name: "whoami", summary: "show who the session is authenticated as",
			doc: `Prints the user, groups, admin flag, Usher domain and controller
address of the session (from the session, no remote call).

Example:
  whoami --json`,
			run: cmdWhoami},
		&command{name: "plan", usage: "start ARGS | OP VMSET | migrate VMSET LNMSET",
			summary: "dry-run a request through the policy chain",
			doc: `Sends the request as a dry run: the controller runs the live policy
chain (authorisation, quota, placement …) and reports what it would
do and the decision trace — which handler approved, modified or
rejected it and why — without changing anything.

Examples:
  plan start -n web -c 5
  plan pause web[1-2]
  plan migrate web1 node3`,
			pos: []argKind{argPlan}, raw: true, run: cmdPlan},
		&command{name: "policy", usage: "status", summary: "show the policy host's status (admins)",
			doc: `policy status shows the controller's policy scripts: which are
loaded, the handlers they registered for each event and in which
order, and their recent errors. Admins only.

Example:
  policy status`,
			pos: []argKind{argPolicy}, run: cmdPolicy},
		&command{name: "watch", usage: "[--json]", summary: "stream events until Ctrl-C or unwatch",
			doc: `Streams the events of your VMs (admins: every event): state changes,
completions, migrations, lost and missing VMs, LNMs coming and going.
In the shell it runs in the background until Ctrl-C or unwatch; with
ush -c it runs until interrupted.

Examples:
  watch
  ush -c watch --json`,
			run: cmdWatch},
		&command{name: "unwatch", summary: "stop watching events", doc: "Stops a running watch.\n\nExample:\n  unwatch", run: cmdUnwatch},
		&command{name: "connect", summary: "connect to the controller",
			doc: `Connects with the configured address and credentials (client.addr,
client.user …). When the session was dropped with disconnect, connect
brings it back.

Example:
  connect`,
			run: cmdConnect},
		&command{name: "reconnect", summary: "drop the session and connect again (reloads the cache)",
			doc: "Drops the session and connects again, reloading the cached VM objects.\n\nExample:\n  reconnect", run: cmdReconnect},
		&command{name: "disconnect", summary: "close the session (connect brings it back)",
			doc: "Closes the session with the controller; connect brings it back.\n\nExample:\n  disconnect", run: cmdDisconnect},
		&command{name: "jobs", summary: "list commands and whether their results are in",
			doc: `Lists the commands whose results were asynchronous, pending or done.

Example:
  jobs`, run: cmdJobs},
		&command{name: "wait", usage: "[N...]", summary: "wait for command N (or all) to finish",
			doc: `Waits until command N has its result (all pending commands without
N) and prints results that were already printed before.

Examples:
  wait 3
  wait`, run: cmdWait},
		&command{name: "help", usage: "[COMMAND]", summary: "this help; help COMMAND for details",
			doc: "Without arguments lists the commands; help COMMAND shows one in detail.\n\nExamples:\n  help\n  help start",
			pos: []argKind{argCommand}, run: cmdHelp},
		&command{name: "exit", aliases: []string{"quit"}, summary: "leave the shell",
			doc: "Leaves the shell (Ctrl-D too). Pending results are not waited for.\n\nExample:\n  wait; exit", run: cmdExit},
	)
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
		for _, a := range c.aliases {
			if a == name {
				return c
			}
		}
	}
	return nil
}

// prepare parses a line into a step. A nil step means an empty line.
func (s *session) prepare(ctx context.Context, line string) (*step, bool, error) {
	words, err := tokenize(line)
	if err != nil {
		return nil, false, err
	}
	if len(words) == 0 || strings.HasPrefix(words[0], "#") {
		return nil, false, nil
	}
	cmd := lookup(words[0])
	if cmd == nil {
		return nil, false, fmt.Errorf("unknown command %q (try help)", words[0])
	}
	a, err := parseArgs(cmd, words[1:])
	if err != nil {
		return nil, false, err
	}
	st, err := cmd.run(ctx, s, line, a)
	return st, a.json, err
}

func local(o *outcome) (*step, error) { return &step{local: o}, nil }

// --- list ---

func cmdList(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	status, all, lists := a.has("status"), a.has("all"), a.has("lists")
	cluster := a.opts["cluster"]
	set := strings.Join(a.pos, " ")
	if !status && !all && !lists {
		vms := c.VMs()
		if set != "" {
			names, err := c.Expand(set)
			if err != nil {
				return nil, err
			}
			keep := map[string]bool{}
			for _, n := range names {
				keep[n] = true
			}
			vms = filterVMs(vms, func(v *api.VM) bool { return keep[v.Name] })
		}
		if cluster != "" {
			vms = filterVMs(vms, func(v *api.VM) bool { return v.Cluster == cluster })
		}
		r := &api.ListReply{VMs: vms}
		if r.VMs == nil {
			r.VMs = []*api.VM{}
		}
		return local(&outcome{text: formatList(r, false, false), value: r})
	}
	var names []string
	if set != "" {
		if all {
			for _, it := range client.SplitSet(set) {
				ns, err := client.ExpandRange(it)
				if err != nil {
					return nil, err
				}
				names = append(names, ns...)
			}
		} else if names, err = c.Expand(set); err != nil {
			return nil, err
		}
	}
	args := api.ListArgs{Names: names, Cluster: cluster, Status: status, All: all, Lists: lists}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		r, err := c.List(ctx, args)
		if err != nil {
			return nil, err
		}
		if r.VMs == nil {
			r.VMs = []*api.VM{}
		}
		return &outcome{text: formatList(r, all, status), value: r}, nil
	}}, nil
}

func filterVMs(vms []*api.VM, keep func(*api.VM) bool) []*api.VM {
	out := vms[:0]
	for _, v := range vms {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// --- list_lnms ---

func cmdListLNMs(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	status := a.has("status")
	set := strings.Join(a.pos, " ")
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		lnms, err := c.ListLNMs(ctx, nil, status)
		if err != nil {
			return nil, err
		}
		names := make([]string, len(lnms))
		for i, l := range lnms {
			names[i] = l.Info.Name
		}
		s.setLNMs(names)
		if set != "" {
			keep, err := client.ExpandLNMs(set, names)
			if err != nil {
				return nil, err
			}
			k := map[string]bool{}
			for _, n := range keep {
				k[n] = true
			}
			var out []*api.LNM
			for _, l := range lnms {
				if k[l.Info.Name] {
					out = append(out, l)
				}
			}
			lnms = out
		}
		if lnms == nil {
			lnms = []*api.LNM{}
		}
		r := &api.ListLNMsReply{LNMs: lnms}
		return &outcome{text: formatLNMs(lnms, status), value: r}, nil
	}}, nil
}

func (s *session) setLNMs(names []string) {
	s.mu.Lock()
	s.lnmCache = append([]string(nil), names...)
	s.lnmAt = time.Now()
	s.mu.Unlock()
}

// lnmNames returns the known LNM names, asking the controller when the
// cached list is older than maxAge.
func (s *session) lnmNames(ctx context.Context, maxAge time.Duration) []string {
	s.mu.Lock()
	names, at := s.lnmCache, s.lnmAt
	s.mu.Unlock()
	if names != nil && time.Since(at) < maxAge {
		return names
	}
	c, err := s.client()
	if err != nil {
		return names
	}
	lnms, err := c.ListLNMs(ctx, nil, false)
	if err != nil {
		return names
	}
	names = make([]string, len(lnms))
	for i, l := range lnms {
		names[i] = l.Info.Name
	}
	s.setLNMs(names)
	return names
}

// --- clusters ---

func cmdClusters(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	if !a.has("all") {
		by := map[string]*api.Cluster{}
		var order []string
		for _, v := range c.VMs() {
			cl := by[v.Cluster]
			if cl == nil {
				cl = &api.Cluster{Name: v.Cluster, Owner: v.Owner}
				by[v.Cluster] = cl
				order = append(order, v.Cluster)
			}
			cl.VMs = append(cl.VMs, v.Name)
		}
		sort.Strings(order)
		r := &api.ClustersReply{Clusters: []api.Cluster{}}
		for _, n := range order {
			r.Clusters = append(r.Clusters, *by[n])
		}
		return local(&outcome{text: formatClusters(r.Clusters, false), value: r})
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		cls, err := c.Clusters(ctx, true)
		if err != nil {
			return nil, err
		}
		if cls == nil {
			cls = []api.Cluster{}
		}
		return &outcome{text: formatClusters(cls, true), value: &api.ClustersReply{Clusters: cls}}, nil
	}}, nil
}

// --- start ---

func startArgs(a *parsed) (api.StartArgs, string, error) {
	var sa api.StartArgs
	sa.Cluster = a.opts["cluster"]
	if sa.Cluster == "" {
		return sa, "", errors.New("start: which cluster? use -n CLUSTER")
	}
	if err := api.ValidLabel(sa.Cluster); err != nil {
		return sa, "", fmt.Errorf("start: cluster name: %v", err)
	}
	num := func(name string) (int, error) {
		v, ok := a.opts[name]
		if !ok {
			return 0, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("start: --%s wants a positive number, not %q", name, v)
		}
		return n, nil
	}
	var err error
	if sa.Count, err = num("count"); err != nil {
		return sa, "", err
	}
	if sa.MemMB, err = num("mem"); err != nil {
		return sa, "", err
	}
	if sa.VCPUs, err = num("vcpus"); err != nil {
		return sa, "", err
	}
	if n := a.opts["names"]; n != "" {
		for _, it := range client.SplitSet(n) {
			ns, err := client.ExpandRange(it)
			if err != nil {
				return sa, "", err
			}
			sa.Names = append(sa.Names, ns...)
		}
	}
	if sa.Count == 0 && len(sa.Names) == 0 {
		return sa, "", errors.New("start: how many? use -c COUNT (or --names)")
	}
	rest, kv := splitKV(a.pos)
	if len(rest) > 0 {
		return sa, "", fmt.Errorf("start: unexpected argument %q (policy arguments are key=value)", rest[0])
	}
	sa.Args = kv
	return sa, a.opts["on"], nil
}

// resolveLNMs expands an LNM set against the controller's LNMs.
func (s *session) resolveLNMs(ctx context.Context, set string) ([]string, error) {
	if set == "" {
		return nil, nil
	}
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	all, err := c.ListLNMs(ctx, nil, false)
	if err != nil {
		return nil, err
	}
	known := make([]string, len(all))
	for i, l := range all {
		known[i] = l.Info.Name
	}
	s.setLNMs(known)
	return client.ExpandLNMs(set, known)
}

func cmdStart(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	sa, on, err := startArgs(a)
	if err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		if sa.LNMs, err = s.resolveLNMs(ctx, on); err != nil {
			return nil, err
		}
		r, err := c.Start(ctx, sa)
		if err != nil {
			return nil, err
		}
		syncCache(ctx, c, r)
		return resultOutcome(r, "start", "started", "in cluster "+sa.Cluster), nil
	}}, nil
}

// --- operations ---

func opVMs(s *session, what string, words []string) (*client.Client, []string, map[string]string, error) {
	c, err := s.client()
	if err != nil {
		return nil, nil, nil, err
	}
	rest, kv := splitKV(words)
	if len(rest) == 0 {
		return nil, nil, nil, fmt.Errorf("%s: which VMs? give a VM set (see help %s)", what, what)
	}
	names, err := c.Expand(strings.Join(rest, " "))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %v", what, err)
	}
	return c, names, kv, nil
}

func cmdOp(ctx context.Context, s *session, op api.Op, a *parsed) (*step, error) {
	c, names, kv, err := opVMs(s, string(op), a.pos)
	if err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		r, err := c.Op(ctx, api.OpArgs{Op: op, VMs: names, Args: kv, Force: a.has("force")})
		if err != nil {
			return nil, err
		}
		syncCache(ctx, c, r)
		ran := r.Op
		if ran == "" {
			ran = op
		}
		note := ""
		if ran != op {
			note = fmt.Sprintf("(policy ran %s instead of %s)", ran, op)
		}
		return resultOutcome(r, string(ran), pastTense(ran), note), nil
	}}, nil
}

func pastTense(op api.Op) string {
	switch op {
	case api.OpPause:
		return "paused"
	case api.OpResume:
		return "resumed"
	case api.OpShutdown:
		return "shut down"
	case api.OpReboot:
		return "rebooted"
	case api.OpHibernate:
		return "hibernated"
	case api.OpRestore:
		return "restored"
	case api.OpDestroy:
		return "destroyed"
	case api.OpCycle:
		return "cycled"
	}
	return string(op)
}

// --- forget ---

func cmdForget(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, names, _, err := opVMs(s, "forget", a.pos)
	if err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		args := api.ForgetArgs{VMs: names}
		if err := args.Validate(); err != nil {
			return nil, err
		}
		r, err := client.Do(ctx, c, api.MForget, args)
		if err != nil {
			return nil, err
		}
		syncCache(ctx, c, r)
		return resultOutcome(r, "forget", "forgotten", ""), nil
	}}, nil
}

// --- migrate ---

func cmdMigrate(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	if len(a.pos) < 2 {
		return nil, errors.New("migrate: usage: migrate VMSET LNMSET")
	}
	vmset, lnmset := strings.Join(a.pos[:len(a.pos)-1], " "), a.pos[len(a.pos)-1]
	c, names, _, err := opVMs(s, "migrate", []string{vmset})
	if err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		targets, err := s.resolveLNMs(ctx, lnmset)
		if err != nil {
			return nil, err
		}
		a := api.MigrateArgs{VMs: names, LNMs: targets}
		if err := a.Validate(); err != nil {
			return nil, err
		}
		r, err := client.Do(ctx, c, api.MMigrate, a)
		if err != nil {
			return nil, err
		}
		syncCache(ctx, c, r)
		return resultOutcome(r, "migrate", "migrated", "to "+strings.Join(targets, ",")), nil
	}}, nil
}

// --- lnm isolate|drain|restore ---

func cmdLNMMode(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	if len(a.pos) < 2 {
		return nil, errors.New("lnm: usage: lnm isolate|drain|restore LNMSET [--reason TEXT]")
	}
	var mode api.NodeMode
	switch a.pos[0] {
	case "isolate":
		mode = api.ModeIsolated
	case "drain":
		mode = api.ModeDraining
	case "restore":
		mode = api.ModeActive
	default:
		return nil, fmt.Errorf("lnm: unknown action %q (isolate, drain or restore)", a.pos[0])
	}
	reason := a.opts["reason"]
	if err := (api.SetLNMModeArgs{LNM: "x", Mode: mode, Reason: reason}).Validate(); err != nil {
		return nil, err
	}
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	set := strings.Join(a.pos[1:], " ")
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		names, err := s.resolveLNMs(ctx, set)
		if err != nil {
			return nil, err
		}
		var out []*api.LNM
		var errs []error
		for _, n := range names {
			l, err := c.SetLNMMode(ctx, n, mode, reason)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n, err))
				continue
			}
			out = append(out, l)
		}
		r := &api.ListLNMsReply{LNMs: out}
		if r.LNMs == nil {
			r.LNMs = []*api.LNM{}
		}
		text := formatLNMs(out, false)
		if len(errs) > 0 {
			return &outcome{text: text, value: r}, errors.Join(errs...)
		}
		return &outcome{text: text, value: r}, nil
	}}, nil
}

// --- reserve ---

func cmdReserve(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	args := api.ReservationsArgs{Action: api.ResList, All: a.has("all")}
	if len(a.pos) > 0 {
		args.Action = a.pos[0]
	}
	num := func(k string) (int, error) {
		v := a.opts[k]
		if v == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("reserve: --%s %q: a number", k, v)
		}
		return n, nil
	}
	set := ""
	switch args.Action {
	case api.ResList:
		if len(a.pos) > 1 {
			return nil, errors.New("reserve list takes no arguments")
		}
	case api.ResCreate:
		if len(a.pos) > 1 {
			return nil, errors.New("reserve create takes options only (reserve create --user U --mem MB --for 8h)")
		}
		args.User, args.Cluster, args.Start, args.OnEnd = a.opts["user"], a.opts["cluster"], a.opts["start"], a.opts["on-end"]
		args.For, args.End = a.opts["for"], a.opts["until"]
		if args.MemMB, err = num("mem"); err != nil {
			return nil, err
		}
		if args.VCPUs, err = num("vcpus"); err != nil {
			return nil, err
		}
		set = a.opts["on"]
	case api.ResExtend, api.ResCancel:
		if len(a.pos) != 2 {
			return nil, fmt.Errorf("reserve %s: give the reservation's id (reserve lists them)", args.Action)
		}
		args.ID = a.pos[1]
		args.For, args.End = a.opts["for"], a.opts["until"]
	default:
		return nil, fmt.Errorf("reserve: unknown action %q (list, create, extend or cancel)", args.Action)
	}
	if set == "" {
		if err := args.Validate(); err != nil {
			return nil, err
		}
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		if set != "" {
			names, err := s.resolveLNMs(ctx, set)
			if err != nil {
				return nil, err
			}
			args.LNMs = names
		}
		r, err := c.Reservations(ctx, args)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatReservations(r), value: r}, nil
	}}, nil
}

// --- whoami ---

type whoami struct {
	api.Identity
	Domain     string `json:"domain"`
	Controller string `json:"controller"`
	Connected  bool   `json:"connected"`
}

func cmdWhoami(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	w := whoami{Identity: c.Identity(), Domain: c.Domain(), Connected: c.Connected()}
	s.mu.Lock()
	w.Controller = s.addr
	s.mu.Unlock()
	if w.Groups == nil {
		w.Groups = []string{}
	}
	text := fmt.Sprintf("%s@%s", w.User, w.Domain)
	if w.Admin {
		text += " (admin)"
	}
	if len(w.Groups) > 0 {
		text += " groups: " + strings.Join(w.Groups, ",")
	}
	if w.Controller != "" {
		text += " on " + w.Controller
	}
	if !w.Connected {
		text += " [disconnected]"
	}
	return local(&outcome{text: text, value: w})
}

// --- plan ---

func cmdPlan(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	if len(a.pos) == 0 {
		return nil, errors.New("plan: usage: plan start ARGS | plan OP VMSET | plan migrate VMSET LNMSET")
	}
	sub := lookup(a.pos[0])
	if sub == nil {
		return nil, fmt.Errorf("plan: cannot plan %q", a.pos[0])
	}
	// parse the rest with the sub-command's options
	sa, err := parseArgs(sub, a.pos[1:])
	if err != nil {
		return nil, err
	}
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	var mk func(ctx context.Context) (api.PlanArgs, error)
	switch {
	case sub.name == "start":
		st, on, err := startArgs(sa)
		if err != nil {
			return nil, err
		}
		mk = func(ctx context.Context) (api.PlanArgs, error) {
			var err error
			st.LNMs, err = s.resolveLNMs(ctx, on)
			return api.PlanArgs{Start: &st}, err
		}
	case sub.name == "migrate":
		if len(sa.pos) < 2 {
			return nil, errors.New("plan migrate: usage: plan migrate VMSET LNMSET")
		}
		_, names, _, err := opVMs(s, "plan migrate", sa.pos[:len(sa.pos)-1])
		if err != nil {
			return nil, err
		}
		lset := sa.pos[len(sa.pos)-1]
		mk = func(ctx context.Context) (api.PlanArgs, error) {
			t, err := s.resolveLNMs(ctx, lset)
			return api.PlanArgs{Migrate: &api.MigrateArgs{VMs: names, LNMs: t}}, err
		}
	default:
		op, err := api.ParseOp(sub.name)
		if err != nil {
			return nil, fmt.Errorf("plan: cannot plan %q", sub.name)
		}
		_, names, kv, err := opVMs(s, "plan "+sub.name, sa.pos)
		if err != nil {
			return nil, err
		}
		mk = func(context.Context) (api.PlanArgs, error) {
			return api.PlanArgs{Op: &api.OpArgs{Op: op, VMs: names, Args: kv}}, nil
		}
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		pa, err := mk(ctx)
		if err != nil {
			return nil, err
		}
		r, err := c.Plan(ctx, pa)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatPlan(r, sub.name), value: r}, nil
	}}, nil
}

// --- policy ---

func cmdPolicy(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	if len(a.pos) != 1 || a.pos[0] != "status" {
		return nil, errors.New("policy: usage: policy status")
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		rep, err := c.Policy(ctx, api.PolicyArgs{Action: "status"})
		if err != nil {
			return nil, err
		}
		raw, err := json.Marshal(rep.Scripts)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatRawJSON(raw), value: rawValue(raw)}, nil
	}}, nil
}

// --- watch ---

func cmdWatch(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	jsonOut := a.json || s.jsonOut
	print := func(ev api.Event) {
		if jsonOut {
			s.out.notify(mustJSONLine(ev))
			return
		}
		if msg := describeEvent(ev, true); msg != "" {
			s.out.notify(ev.Time.Local().Format("15:04:05 ") + msg)
		}
	}
	// Admins watch everything through a watch stream; other users see
	// the events of their own VMs, which the client receives anyway.
	watch := func(ctx context.Context) error {
		if c.Identity().Admin {
			return c.Watch(ctx, print)
		}
		cancel := c.OnEvent(print)
		defer cancel()
		<-ctx.Done()
		return nil
	}
	if !s.interactive {
		return &step{remote: func(ctx context.Context) (*outcome, error) {
			if err := watch(ctx); err != nil {
				return nil, err
			}
			return &outcome{}, nil
		}}, nil
	}
	s.mu.Lock()
	if s.watchEnd != nil {
		s.mu.Unlock()
		return nil, errors.New("watch: already watching (unwatch or Ctrl-C stops it)")
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.watchEnd = cancel
	s.watchWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.watchWG.Done()
		err := watch(wctx)
		if err != nil && wctx.Err() == nil {
			s.out.notify("* watch ended: " + err.Error())
		}
		s.mu.Lock()
		if s.watchEnd != nil && wctx.Err() == nil {
			s.watchEnd = nil
		}
		s.mu.Unlock()
	}()
	what := "events of your VMs"
	if c.Identity().Admin {
		what = "all events"
	}
	return local(&outcome{text: "watching " + what + "; Ctrl-C or unwatch stops"})
}

func cmdUnwatch(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	if !s.stopWatch() {
		return local(&outcome{text: "not watching"})
	}
	return local(&outcome{text: "stopped watching"})
}

// --- connection ---

func cmdConnect(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	s.mu.Lock()
	c, dial := s.c, s.dial
	s.mu.Unlock()
	if c != nil && c.Connected() {
		return local(&outcome{text: "already connected (reconnect starts a new session)"})
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		if c != nil {
			if err := c.Reconnect(ctx); err != nil {
				return nil, err
			}
			return &outcome{text: "connected"}, nil
		}
		if dial == nil {
			return nil, errors.New("no connection settings")
		}
		nc, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.owned = true
		s.mu.Unlock()
		s.attach(nc)
		return &outcome{text: "connected as " + nc.Identity().User}, nil
	}}, nil
}

func cmdReconnect(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c == nil {
		return cmdConnect(ctx, s, line, a)
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		if err := c.Reconnect(ctx); err != nil {
			return nil, err
		}
		return &outcome{text: fmt.Sprintf("reconnected; %d VMs cached", len(c.VMs()))}, nil
	}}, nil
}

func cmdDisconnect(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	s.stopWatch()
	c.Disconnect()
	return local(&outcome{text: "disconnected (connect to come back)"})
}

// --- jobs ---

type jobInfo struct {
	N       int     `json:"n"`
	Command string  `json:"command"`
	State   string  `json:"state"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

func cmdJobs(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	var infos []jobInfo
	var b strings.Builder
	s.mu.Lock()
	for _, j := range s.jobs {
		ji := jobInfo{N: j.n, Command: j.line, State: "pending"}
		end := time.Now()
		if !j.end.IsZero() {
			end = j.end
			ji.State = "done"
			if j.err != nil {
				ji.State, ji.Error = "failed", j.err.Error()
			} else if j.out != nil && j.out.err != nil {
				ji.State, ji.Error = "incomplete", j.out.err.Error()
			}
		}
		ji.Seconds = end.Sub(j.start).Round(time.Millisecond).Seconds()
		infos = append(infos, ji)
	}
	s.mu.Unlock()
	if len(infos) == 0 {
		return local(&outcome{text: "no commands yet", value: []jobInfo{}})
	}
	for _, ji := range infos {
		fmt.Fprintf(&b, "%3d  %-10s %6.2fs  %s", ji.N, ji.State, ji.Seconds, ji.Command)
		if ji.Error != "" {
			fmt.Fprintf(&b, "  (%s)", ji.Error)
		}
		b.WriteString("\n")
	}
	return local(&outcome{text: strings.TrimRight(b.String(), "\n"), value: infos})
}

func cmdWait(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	var js []*job
	if len(a.pos) == 0 {
		js = s.allJobs()
	}
	for _, w := range a.pos {
		n, err := strconv.Atoi(strings.TrimPrefix(w, "%"))
		if err != nil {
			return nil, fmt.Errorf("wait: %q is not a command number", w)
		}
		j := s.job(n)
		if j == nil {
			return nil, fmt.Errorf("wait: no command %d (see jobs)", n)
		}
		js = append(js, j)
	}
	var b strings.Builder
	for _, j := range js {
		select {
		case <-j.done:
			if len(a.pos) > 0 {
				b.WriteString(jobText(j, a.json || s.jsonOut) + "\n")
			}
		default:
			select {
			case <-j.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	if b.Len() == 0 {
		b.WriteString("done")
	}
	return local(&outcome{text: strings.TrimRight(b.String(), "\n")})
}

// --- help, exit ---

func cmdHelp(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	if len(a.pos) == 0 {
		return local(&outcome{text: helpIndex()})
	}
	c := lookup(a.pos[0])
	if c == nil {
		return nil, fmt.Errorf("help: no command %q", a.pos[0])
	}
	return local(&outcome{text: helpCommand(c)})
}

func cmdExit(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	return &step{local: &outcome{}, quit: true}, nil
}

// cacheSyncWait bounds how long a result waits for the cache.
const cacheSyncWait = 2 * time.Second

// syncCache waits (briefly) until the client's cache reflects the VM
// objects of a result, so that a cached answer given after "Command N
// result" (list, clusters) already shows what the command did.
func syncCache(ctx context.Context, c *client.Client, r *api.Result) {
	current := func() bool {
		for _, d := range r.Done {
			if !d.OK || d.VM == nil {
				continue
			}
			v, ok := c.VM(d.VM.Name)
			if d.VM.State == api.StateDestroyed {
				if ok {
					return false
				}
				continue
			}
			if !ok || v.Version < d.VM.Version {
				return false
			}
		}
		return true
	}
	ch := make(chan struct{}, 1)
	cancel := c.OnEvent(func(api.Event) {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	defer cancel()
	timer := time.NewTimer(cacheSyncWait)
	defer timer.Stop()
	for !current() {
		select {
		case <-ch:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// --- images, keys ---

func cmdImages(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	if len(a.pos) > 0 {
		return nil, errors.New("images takes no arguments")
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		r, err := c.Images(ctx)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatImages(r), value: r}, nil
	}}, nil
}

func cmdKeys(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	args := api.KeysArgs{Action: api.KeysList, User: a.opts["user"]}
	if len(a.pos) > 0 {
		args.Action = a.pos[0]
		rest := strings.Join(a.pos[1:], " ")
		switch args.Action {
		case api.KeysList:
			if rest != "" {
				return nil, errors.New("keys list takes no key")
			}
		case api.KeysAdd, api.KeysRemove:
			if rest == "" {
				return nil, fmt.Errorf("keys %s: give a key (an authorized_keys line or a .pub file)", args.Action)
			}
			args.Key = rest
			if len(a.pos) == 2 && !strings.HasPrefix(rest, "SHA256:") {
				if b, err := readKeyFile(rest); err == nil {
					args.Key = b
				} else if !errors.Is(err, os.ErrNotExist) {
					return nil, fmt.Errorf("keys %s: %w", args.Action, err)
				}
			}
		default:
			return nil, fmt.Errorf("keys: unknown action %q (list, add or remove)", args.Action)
		}
	}
	if err := args.Validate(); err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		r, err := c.Keys(ctx, args)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatKeys(r), value: r}, nil
	}}, nil
}

// readKeyFile reads a .pub file named on the command line (~ is the
// home folder); a large file is refused, not read.
func readKeyFile(p string) (string, error) {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, rest)
		}
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Size() > api.MaxKeyLine {
		return "", fmt.Errorf("%s is not a public key file (at most %d bytes)", p, api.MaxKeyLine)
	}
	b, err := os.ReadFile(p)
	return strings.TrimSpace(string(b)), err
}

func cmdToken(ctx context.Context, s *session, line string, a *parsed) (*step, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	args := api.TokensArgs{Action: api.TokensList, User: a.opts["user"], Name: a.opts["name"], Expires: a.opts["expires"]}
	if len(a.pos) > 0 {
		args.Action = a.pos[0]
	}
	switch args.Action {
	case api.TokensList, api.TokensCreate:
		if len(a.pos) > 1 {
			return nil, fmt.Errorf("token %s takes no more words", args.Action)
		}
	case api.TokensRevoke:
		if len(a.pos) != 2 {
			return nil, errors.New("token revoke ID")
		}
		args.ID = a.pos[1]
	default:
		return nil, fmt.Errorf("token: unknown action %q (list, create or revoke)", args.Action)
	}
	if err := args.Validate(); err != nil {
		return nil, err
	}
	return &step{remote: func(ctx context.Context) (*outcome, error) {
		r, err := c.Tokens(ctx, args)
		if err != nil {
			return nil, err
		}
		return &outcome{text: formatTokens(r), value: r}, nil
	}}, nil
}
