package repl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/usher-vm/usher/api"
)

func table(header []string, rows [][]string) string {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	return strings.TrimRight(b.String(), "\n")
}

func short(name string) string {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return name[:i]
	}
	return name
}

func human(bytes float64) string {
	units := []string{"B", "K", "M", "G", "T"}
	i := 0
	for bytes >= 1024 && i < len(units)-1 {
		bytes /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f%s", bytes, units[i])
	}
	return fmt.Sprintf("%.1f%s", bytes, units[i])
}

func vmRows(vms []*api.VM, owner, status bool) [][]string {
	var rows [][]string
	for _, v := range vms {
		name := v.Short
		if owner {
			name = v.Short + "." + v.Owner
		}
		r := []string{name, v.Cluster, string(v.State), v.LNM, fmt.Sprintf("%dM", v.MemMB), fmt.Sprint(v.VCPUs)}
		if status {
			if u := v.Usage; u != nil {
				r = append(r, fmt.Sprintf("%.2f/%.2f/%.2f", u.CPU.M1, u.CPU.M5, u.CPU.M15), human(u.MemBytes.M1),
					human(u.NetRx.M1)+"/s", human(u.NetTx.M1)+"/s", human(u.DiskRead.M1+u.DiskWrite.M1)+"/s")
			} else {
				r = append(r, "-", "-", "-", "-", "-")
			}
		}
		rows = append(rows, r)
	}
	return rows
}

func formatList(r *api.ListReply, owner, status bool) string {
	header := []string{"NAME", "CLUSTER", "STATE", "LNM", "MEM", "VCPUS"}
	if status {
		header = append(header, "CPU(1/5/15m)", "MEM-USED", "NET-RX", "NET-TX", "DISK-IO")
	}
	var b strings.Builder
	if len(r.VMs) == 0 {
		b.WriteString("no VMs")
	} else {
		b.WriteString(table(header, vmRows(r.VMs, owner, status)))
		fmt.Fprintf(&b, "\n%d VMs", len(r.VMs))
	}
	for _, l := range []struct {
		name string
		vms  []*api.VM
	}{{"lost", r.Lost}, {"missing", r.Missing}, {"unmanaged", r.Unmanaged}, {"conflicts (reported by another node than the one holding them)", r.Conflicts}} {
		if len(l.vms) > 0 {
			fmt.Fprintf(&b, "\n%s:\n%s", l.name, table(header, vmRows(l.vms, true, status)))
		}
	}
	return b.String()
}

func formatLNMs(lnms []*api.LNM, status bool) string {
	if len(lnms) == 0 {
		return "no LNMs"
	}
	header := []string{"NAME", "STATE", "MODE", "ADDRESS", "DRIVER", "CPUS", "MEM", "VMS", "FREE-MEM", "FREE-VCPUS", "GUARANTEEABLE"}
	if status {
		header = append(header, "CPU(1/5/15m)", "MEM-USED")
	}
	var rows [][]string
	var notes []string
	for _, l := range lnms {
		mode := string(l.Mode)
		if mode == "" {
			mode = string(api.ModeActive)
		}
		if l.Fenced {
			mode += ",fenced"
		}
		if why := modeNote(l); why != "" {
			notes = append(notes, l.Info.Name+": "+why)
		}
		r := []string{l.Info.Name, string(l.State), mode, l.Info.Address, l.Info.Driver, fmt.Sprint(l.Info.CPUs),
			fmt.Sprintf("%dM", l.Info.MemMB), fmt.Sprint(l.Status.VMs), fmt.Sprintf("%dM", l.Status.FreeMemMB), fmt.Sprint(l.Status.FreeVCPUs),
			fmt.Sprint(max(l.Status.FreeGuaranteedVCPUs, 0))}
		if status {
			u := l.Status.Usage
			r = append(r, fmt.Sprintf("%.2f/%.2f/%.2f", u.CPU.M1, u.CPU.M5, u.CPU.M15), human(u.MemBytes.M1))
		}
		rows = append(rows, r)
	}
	out := table(header, rows)
	if len(notes) > 0 {
		out += "\n" + strings.Join(notes, "\n")
	}
	return out
}

// modeNote says why a node is not active and what a policy reported.
func modeNote(l *api.LNM) string {
	var parts []string
	if l.Mode != "" && l.Mode != api.ModeActive {
		p := string(l.Mode)
		if !l.ModeSince.IsZero() {
			p += " since " + l.ModeSince.Local().Format("2006-01-02 15:04")
		}
		if l.ModeBy != "" {
			p += " by " + l.ModeBy
		}
		if l.ModeReason != "" {
			p += ": " + l.ModeReason
		}
		parts = append(parts, p)
	}
	if l.Notice != "" {
		parts = append(parts, l.Notice)
	}
	return strings.Join(parts, " — ")
}

func formatClusters(cls []api.Cluster, owner bool) string {
	if len(cls) == 0 {
		return "no clusters"
	}
	header := []string{"CLUSTER", "VMS", "MEMBERS"}
	if owner {
		header = []string{"CLUSTER", "OWNER", "VMS", "MEMBERS"}
	}
	var rows [][]string
	for _, c := range cls {
		members := make([]string, len(c.VMs))
		for i, n := range c.VMs {
			members[i] = short(n)
		}
		r := []string{c.Name, fmt.Sprint(len(c.VMs)), strings.Join(members, ",")}
		if owner {
			r = []string{c.Name, c.Owner, fmt.Sprint(len(c.VMs)), strings.Join(members, ",")}
		}
		rows = append(rows, r)
	}
	return table(header, rows)
}

// resultOutcome describes a request's result; anything short of every
// requested VM succeeding is a partial failure.
func resultOutcome(r *api.Result, what, verb, suffix string) *outcome {
	if r.Done == nil {
		r.Done = []api.VMResult{}
	}
	ok := r.OK()
	req := r.Requested
	if req == 0 {
		req = len(r.Done) + len(r.Dropped)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d of %d VMs", verb, ok, req)
	if suffix != "" {
		b.WriteString(" " + suffix)
	}
	for _, d := range r.Done {
		if d.OK {
			st := string(d.State)
			if st == "" && d.VM != nil {
				st = string(d.VM.State)
			}
			fmt.Fprintf(&b, "\n  %-12s %-10s %s", short(d.Name), st, d.LNM)
		} else {
			fmt.Fprintf(&b, "\n  %-12s FAILED     %s", short(d.Name), d.Error)
		}
	}
	for _, d := range r.Dropped {
		fmt.Fprintf(&b, "\n  %-12s dropped: %s", short(d.VM), d.Reason)
		if d.By != "" {
			fmt.Fprintf(&b, " (by %s)", d.By)
		}
	}
	o := &outcome{text: b.String(), value: r}
	if ok < req || ok < len(r.Done) || len(r.Dropped) > 0 {
		o.err = fmt.Errorf("%s: only %d of %d VMs %s", what, ok, req, verb)
	}
	return o
}

func formatPlan(r *api.Result, what string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan %s (dry run, nothing changed): %d of %d VMs would proceed", what, len(r.Done), r.Requested)
	for _, d := range r.Done {
		fmt.Fprintf(&b, "\n  %-12s", short(d.Name))
		if d.LNM != "" {
			fmt.Fprintf(&b, " on %s", d.LNM)
		}
		if d.Error != "" {
			fmt.Fprintf(&b, " error: %s", d.Error)
		}
	}
	for _, d := range r.Dropped {
		fmt.Fprintf(&b, "\n  %-12s dropped: %s", short(d.VM), d.Reason)
		if d.By != "" {
			fmt.Fprintf(&b, " (by %s)", d.By)
		}
	}
	if len(r.Trace) > 0 {
		var rows [][]string
		for _, t := range r.Trace {
			rows = append(rows, []string{t.Event, t.Handler, t.Action, fmt.Sprintf("%dµs", t.Micros), t.Detail})
		}
		b.WriteString("\ndecision trace:\n")
		b.WriteString(indent(table([]string{"EVENT", "HANDLER", "ACTION", "TIME", "DETAIL"}, rows), "  "))
	} else {
		b.WriteString("\n(no decision trace)")
	}
	return b.String()
}

func indent(s, pre string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = pre + lines[i]
	}
	return strings.Join(lines, "\n")
}

// rawValue makes raw JSON marshal as itself (null when empty).
func rawValue(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	return raw
}

// formatRawJSON prints arbitrary JSON as an indented outline:
// objects as "key: value", lists of scalars inline, lists of objects as
// "- " items.
func formatRawJSON(raw json.RawMessage) string {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	var b strings.Builder
	outline(&b, v, 0)
	return strings.TrimRight(b.String(), "\n")
}

func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "-", true
	case string:
		return x, true
	case bool, float64:
		return fmt.Sprint(x), true
	case []any:
		parts := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := scalar(e)
			if !ok {
				return "", false
			}
			parts = append(parts, s)
		}
		if len(parts) == 0 {
			return "(none)", true
		}
		return strings.Join(parts, ", "), true
	case map[string]any:
		if len(x) == 0 {
			return "(none)", true
		}
	}
	return "", false
}

func outline(b *strings.Builder, v any, depth int) {
	pad := strings.Repeat("  ", depth)
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if s, ok := scalar(x[k]); ok {
				fmt.Fprintf(b, "%s%s: %s\n", pad, k, s)
				continue
			}
			fmt.Fprintf(b, "%s%s:\n", pad, k)
			outline(b, x[k], depth+1)
		}
	case []any:
		for _, e := range x {
			if s, ok := scalar(e); ok {
				fmt.Fprintf(b, "%s- %s\n", pad, s)
				continue
			}
			var sub strings.Builder
			outline(&sub, e, depth+1)
			text := sub.String()
			// put the first line after the dash
			text = pad + "- " + strings.TrimPrefix(text, pad+"  ")
			b.WriteString(text)
		}
	default:
		s, _ := scalar(x)
		fmt.Fprintf(b, "%s%s\n", pad, s)
	}
}

func mustJSONLine(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf(`{"error":%q}`, err.Error())
	}
	return string(b)
}

// --- help ---

func helpIndex() string {
	var rows [][]string
	for _, c := range commands {
		name := c.name
		if len(c.aliases) > 0 {
			name += " (" + strings.Join(c.aliases, ", ") + ")"
		}
		rows = append(rows, []string{name, c.summary})
	}
	return `Commands (help COMMAND for details and examples):
` + indent(table([]string{"COMMAND", "WHAT IT DOES"}, rows), "  ") + `

Commands that ask the controller run asynchronously: they print
"<Command N result pending...>" at once and "Command N result: …" when the
answer arrives; jobs lists them and wait N waits for one. Answers the
client already holds (list of your VMs, clusters, whoami) print at once.
Every command takes --json. VM sets: web1, web[1-4], /re/, @cluster.`
}

func helpCommand(c *command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n  %s\n", c.name, c.usage, c.summary)
	if len(c.aliases) > 0 {
		fmt.Fprintf(&b, "  (also: %s)\n", strings.Join(c.aliases, ", "))
	}
	b.WriteString("\n" + c.doc + "\n")
	if len(c.opts) > 0 {
		b.WriteString("\nOptions:\n")
		var rows [][]string
		for _, o := range c.opts {
			name := "--" + o.long
			if o.short != "" {
				name = "-" + o.short + ", " + name
			}
			if o.arg != "" {
				name += " " + o.arg
			}
			rows = append(rows, []string{name, o.help})
		}
		rows = append(rows, []string{"--json", jsonOpt.help})
		for _, line := range strings.Split(tableNoHeader(rows), "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func tableNoHeader(rows [][]string) string {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	return strings.TrimRight(b.String(), "\n")
}

func formatImages(r api.ImagesReply) string {
	var b strings.Builder
	if len(r.Images) == 0 {
		b.WriteString("no images (the site has no image store, or it is empty)")
	} else {
		var rows [][]string
		for _, im := range r.Images {
			mem := ""
			if im.MinMemMB > 0 {
				mem = fmt.Sprintf("%d", im.MinMemMB)
			}
			rows = append(rows, []string{im.Name, im.Format, im.Boot, mem, fmt.Sprintf("%.1f", float64(im.Bytes)/(1<<20)), im.Description})
		}
		b.WriteString(table([]string{"IMAGE", "FORMAT", "BOOT", "MIN_MB", "SIZE_MIB", "DESCRIPTION"}, rows))
	}
	for _, p := range r.Problems {
		b.WriteString("\nproblem: " + p)
	}
	return b.String()
}

func formatKeys(r api.KeysReply) string {
	if len(r.Keys) == 0 {
		return "no SSH keys registered for " + r.User + " (keys add ~/.ssh/id_ed25519.pub)"
	}
	var rows [][]string
	for _, k := range r.Keys {
		rows = append(rows, []string{k.Type, k.Fingerprint, k.Comment})
	}
	return table([]string{"TYPE", "FINGERPRINT", "COMMENT"}, rows)
}

func formatReservations(r api.ReservationsReply) string {
	if len(r.Reservations) == 0 {
		return "no reservations"
	}
	var rows [][]string
	for _, x := range r.Reservations {
		owner := x.Owner
		if x.Cluster != "" {
			owner += "/" + x.Cluster
		}
		mem, cpus := 0, 0
		for _, u := range x.Used {
			mem += u.MemMB
			cpus += u.VCPUs
		}
		rows = append(rows, []string{x.ID, owner, x.State, strings.Join(x.LNMs, ","),
			fmt.Sprintf("%dM/%d", x.MemMB, x.VCPUs), fmt.Sprintf("%dM/%d", mem, cpus), fmt.Sprint(len(x.VMs)),
			x.Start.Local().Format("2006-01-02 15:04"), x.End.Local().Format("2006-01-02 15:04"), x.OnEnd})
	}
	return table([]string{"ID", "OWNER", "STATE", "LNMS", "HELD(EACH)", "USED", "VMS", "START", "END", "AT-END"}, rows)
}

func formatTokens(r api.TokensReply) string {
	var b strings.Builder
	if r.Secret != "" {
		b.WriteString("new token (shown once; use it as \"Authorization: Bearer TOKEN\"):\n  " + r.Secret + "\n")
	}
	if len(r.Tokens) == 0 {
		b.WriteString("no API tokens for " + r.User)
		return b.String()
	}
	var rows [][]string
	for _, t := range r.Tokens {
		exp := "never"
		if !t.Expires.IsZero() {
			exp = t.Expires.Local().Format("2006-01-02 15:04")
		}
		admin := ""
		if t.Admin {
			admin = "admin"
		}
		rows = append(rows, []string{t.ID, t.Name, t.Created.Local().Format("2006-01-02 15:04"), exp, admin})
	}
	b.WriteString(table([]string{"ID", "NAME", "CREATED", "EXPIRES", ""}, rows))
	return b.String()
}
