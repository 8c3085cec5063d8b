package repl

import (
	"fmt"
	"strings"
)

// tokenize splits a command line into words. Single and double quotes
// group words; a backslash escapes the next character outside single
// quotes.
func tokenize(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	esc := false
	for _, r := range line {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case quote != 0:
			if r == quote {
				quote = 0
			} else if r == '\\' && quote == '"' {
				esc = true
			} else {
				cur.WriteRune(r)
			}
		case r == '\\':
			esc, inWord = true, true
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// opt is one option of a command.
type opt struct {
	long  string  // name without dashes
	short string  // one letter, or ""
	arg   string  // metavariable when the option takes a value; "" for a switch
	help  string  // one line
	kind  argKind // what completes its value
}

// argKind says what a word completes to.
type argKind int

const (
	argNone argKind = iota
	argVMSet
	argLNMSet
	argCluster
	argCommand
	argPlan
	argPolicy
)

// parsed is a command line after option parsing.
type parsed struct {
	opts map[string]string // long name → value ("true" for switches)
	pos  []string          // positional words in order
	json bool
}

func (p *parsed) has(name string) bool { _, ok := p.opts[name]; return ok }

// jsonOpt is accepted by every command.
var jsonOpt = opt{long: "json", help: "print the result as JSON"}

// parseArgs parses words against a command's options. Options and
// positional words may be interleaved; "--" ends the options.
func parseArgs(cmd *command, words []string) (*parsed, error) {
	p := &parsed{opts: map[string]string{}}
	find := func(name string, long bool) *opt {
		for i := range cmd.opts {
			o := &cmd.opts[i]
			if (long && o.long == name) || (!long && o.short != "" && o.short == name) {
				return o
			}
		}
		if long && name == "json" {
			return &jsonOpt
		}
		return nil
	}
	if cmd.raw {
		for _, w := range words {
			if w == "--json" {
				p.json = true
				p.opts["json"] = "true"
				continue
			}
			p.pos = append(p.pos, w)
		}
		return p, nil
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			p.pos = append(p.pos, words[i+1:]...)
			break
		}
		if len(w) < 2 || w[0] != '-' || (w[1] >= '0' && w[1] <= '9') {
			p.pos = append(p.pos, w)
			continue
		}
		long := strings.HasPrefix(w, "--")
		name := strings.TrimLeft(w, "-")
		val, hasVal := "", false
		if i := strings.IndexByte(name, '='); i >= 0 {
			name, val, hasVal = name[:i], name[i+1:], true
		}
		o := find(name, long)
		if o == nil && !long {
			o = find(name, true) // -status works like --status
		}
		if o == nil {
			return nil, fmt.Errorf("%s: unknown option %s (see help %s)", cmd.name, w, cmd.name)
		}
		if o.arg == "" {
			if hasVal {
				return nil, fmt.Errorf("%s: option --%s takes no value", cmd.name, o.long)
			}
			p.opts[o.long] = "true"
			if o.long == "json" {
				p.json = true
			}
			continue
		}
		if !hasVal {
			if i+1 >= len(words) {
				return nil, fmt.Errorf("%s: option --%s needs a value (%s)", cmd.name, o.long, o.arg)
			}
			i++
			val = words[i]
		}
		p.opts[o.long] = val
	}
	return p, nil
}

// splitKV separates key=value words (arguments for the policies) from the
// other positional words.
func splitKV(words []string) (rest []string, kv map[string]string) {
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok && k != "" && !strings.ContainsAny(k, "/[]@,") {
			if kv == nil {
				kv = map[string]string{}
			}
			kv[k] = v
			continue
		}
		rest = append(rest, w)
	}
	return rest, kv
}
