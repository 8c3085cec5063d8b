package client

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/usher-vm/usher/api"
)

// MaxRangeSize bounds how many names one range expression may produce.
const MaxRangeSize = 100000

// SplitSet splits a set expression into items: commas and spaces separate
// ErrNoMatch is wrapped by set expansion errors about names, patterns or
// clusters that match none of the VMs.
var ErrNoMatch = errors.New("no such VM")

// items, except inside [...] and /.../.
func SplitSet(expr string) []string {
	var items []string
	var cur strings.Builder
	depth, inRE := 0, false
	flush := func() {
		if cur.Len() > 0 {
			items = append(items, cur.String())
			cur.Reset()
		}
	}
	for i, r := range expr {
		switch {
		case r == '/' && depth == 0 && (cur.Len() == 0 || inRE):
			if inRE && i > 0 && expr[i-1] == '\\' {
				cur.WriteRune(r)
				continue
			}
			inRE = !inRE
			cur.WriteRune(r)
		case inRE:
			cur.WriteRune(r)
		case r == '[':
			depth++
			cur.WriteRune(r)
		case r == ']':
			if depth > 0 {
				depth--
			}
			cur.WriteRune(r)
		case (r == ',' || r == ' ' || r == '\t') && depth == 0:
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return items
}

// ExpandRange expands "sneetch[1-3,7]" into sneetch1 sneetch2 sneetch3
// sneetch7. Items without brackets come back unchanged.
func ExpandRange(item string) ([]string, error) {
	open := strings.IndexByte(item, '[')
	if open < 0 {
		return []string{item}, nil
	}
	close := strings.IndexByte(item[open:], ']')
	if close < 0 {
		return nil, fmt.Errorf("range %q: missing ']'", item)
	}
	close += open
	prefix, body, suffix := item[:open], item[open+1:close], item[close+1:]
	if strings.ContainsAny(suffix, "[]") {
		return nil, fmt.Errorf("range %q: only one [...] range is allowed", item)
	}
	var out []string
	for _, part := range strings.Split(body, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("range %q: %q is not a number", item, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("range %q: %q is not a number", item, hi)
			}
		}
		if a < 0 || b < a {
			return nil, fmt.Errorf("range %q: %d-%d is empty or negative", item, a, b)
		}
		// Counted before anything is made, without overflow: b-a may be
		// near the largest int.
		if b-a >= MaxRangeSize || len(out)+(b-a+1) > MaxRangeSize {
			return nil, fmt.Errorf("range %q: more than %d names", item, MaxRangeSize)
		}
		for k := 0; k <= b-a; k++ { // not i <= b: b may be the largest int
			out = append(out, prefix+strconv.Itoa(a+k)+suffix)
		}
	}
	return out, nil
}

// ExpandVMs resolves a VM set against known VMs (usually the client's
// cache): regular expressions (/re/), explicit names (short, short.owner or
// full), ranges (sneetch[1-10]) and cluster names (@web or a bare cluster
// name). It fails naming the first item that matches nothing, so no request
// goes out for a VM that does not exist or is not the caller's.
func ExpandVMs(expr string, vms []*api.VM, domain string) ([]string, error) {
	items := SplitSet(expr)
	if len(items) == 0 {
		return nil, fmt.Errorf("empty VM set")
	}
	byFull := make(map[string]*api.VM, len(vms))
	byShort := make(map[string][]*api.VM, len(vms))
	clusters := map[string][]string{}
	for _, v := range vms {
		byFull[v.Name] = v
		byShort[v.Short] = append(byShort[v.Short], v)
		byShort[v.Short+"."+v.Owner] = append(byShort[v.Short+"."+v.Owner], v)
		clusters[v.Cluster] = append(clusters[v.Cluster], v.Name)
	}
	seen := map[string]bool{}
	var out []string
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	lookup := func(name string) ([]string, error) {
		if v, ok := byFull[name]; ok {
			return []string{v.Name}, nil
		}
		if vs := byShort[name]; len(vs) == 1 {
			return []string{vs[0].Name}, nil
		} else if len(vs) > 1 {
			return nil, fmt.Errorf("%q is ambiguous (%d VMs); use the full name", name, len(vs))
		}
		return nil, nil
	}
	for _, it := range items {
		switch {
		case len(it) >= 2 && it[0] == '/' && it[len(it)-1] == '/':
			re, err := regexp.Compile("^(?:" + it[1:len(it)-1] + ")$")
			if err != nil {
				return nil, fmt.Errorf("VM set %s: %v", it, err)
			}
			var hit []string
			for _, v := range vms {
				if re.MatchString(v.Short) || re.MatchString(v.Name) {
					hit = append(hit, v.Name)
				}
			}
			if len(hit) == 0 {
				return nil, fmt.Errorf("%w: none of yours matches %s", ErrNoMatch, it)
			}
			sort.Strings(hit)
			for _, n := range hit {
				add(n)
			}
		case strings.HasPrefix(it, "@"):
			names := clusters[it[1:]]
			if len(names) == 0 {
				return nil, fmt.Errorf("%w: no cluster %q among your VMs", ErrNoMatch, it[1:])
			}
			for _, n := range sortedNatural(names, byFull) {
				add(n)
			}
		default:
			names, err := ExpandRange(it)
			if err != nil {
				return nil, err
			}
			for _, n := range names {
				got, err := lookup(n)
				if err != nil {
					return nil, err
				}
				if got == nil && len(names) == 1 {
					if cl := clusters[n]; len(cl) > 0 {
						got = sortedNatural(cl, byFull)
					}
				}
				if got == nil {
					if domain != "" && strings.HasSuffix(n, "."+domain) {
						return nil, fmt.Errorf("%w %s among your VMs", ErrNoMatch, n)
					}
					return nil, fmt.Errorf("%w %q among your VMs", ErrNoMatch, n)
				}
				for _, g := range got {
					add(g)
				}
			}
		}
	}
	return out, nil
}

func sortedNatural(names []string, by map[string]*api.VM) []string {
	out := append([]string(nil), names...)
	sort.Slice(out, func(i, j int) bool {
		a, b := by[out[i]], by[out[j]]
		if a == nil || b == nil {
			return out[i] < out[j]
		}
		ai, _ := strconv.Atoi(strings.TrimPrefix(a.Short, a.Cluster))
		bi, _ := strconv.Atoi(strings.TrimPrefix(b.Short, b.Cluster))
		if ai != bi {
			return ai < bi
		}
		return out[i] < out[j]
	})
	return out
}

// ExpandLNMs resolves an LNM set (regular expressions, explicit names,
// ranges) against known LNM names.
func ExpandLNMs(expr string, known []string) ([]string, error) {
	items := SplitSet(expr)
	if len(items) == 0 {
		return nil, fmt.Errorf("empty LNM set")
	}
	have := map[string]bool{}
	for _, n := range known {
		have[n] = true
	}
	seen := map[string]bool{}
	var out []string
	for _, it := range items {
		if len(it) >= 2 && it[0] == '/' && it[len(it)-1] == '/' {
			re, err := regexp.Compile("^(?:" + it[1:len(it)-1] + ")$")
			if err != nil {
				return nil, fmt.Errorf("LNM set %s: %v", it, err)
			}
			hit := 0
			for _, n := range known {
				if re.MatchString(n) && !seen[n] {
					seen[n] = true
					out = append(out, n)
					hit++
				}
			}
			if hit == 0 {
				return nil, fmt.Errorf("no LNM matches %s", it)
			}
			continue
		}
		names, err := ExpandRange(it)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if !have[n] {
				return nil, fmt.Errorf("no such LNM %q", n)
			}
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}
