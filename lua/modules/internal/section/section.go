// Package section reads one table of the usher configuration (a
// map[string]any as core/config normalises TOML: strings, int64, bool,
// []any, map[string]any) for the module packages: typed fields, secrets
// held in files, and unknown keys refused by name.
//
// It may import the standard library only.
package section

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Reader reads the table M, named Path in messages
// ("policy.modules.ldap"). It collects problems rather than stopping at
// the first; the readers of its sub-tables (Table, Tables) collect into
// the same list.
type Reader struct {
	Path string
	M    map[string]any
	errs *[]error
}

// New reads m under path.
func New(path string, m map[string]any) *Reader { return &Reader{Path: path, M: m, errs: new([]error)} }

// Err returns every problem found so far by r and the readers of its
// sub-tables, or nil.
func (r *Reader) Err() error { return errors.Join(*r.errs...) }

// Failf records a problem with key k.
func (r *Reader) Failf(k, format string, args ...any) {
	*r.errs = append(*r.errs, fmt.Errorf("%s.%s: %s", r.Path, k, fmt.Sprintf(format, args...)))
}

// Known refuses every key not in known, naming the known ones.
func (r *Reader) Known(known ...string) {
	var unknown []string
	for k := range r.M {
		found := false
		for _, n := range known {
			found = found || n == k
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		r.Failf(k, "unknown key (known: %s)", strings.Join(known, ", "))
	}
}

// String is k as a string ("" when unset).
func (r *Reader) String(k string) string {
	switch v := r.M[k].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		r.Failf(k, "must be a string")
		return ""
	}
}

// Bool is k as a boolean (false when unset).
func (r *Reader) Bool(k string) bool {
	switch v := r.M[k].(type) {
	case nil:
		return false
	case bool:
		return v
	default:
		r.Failf(k, "must be true or false")
		return false
	}
}

// Int is k as an integer (0 when unset).
func (r *Reader) Int(k string) int {
	switch v := r.M[k].(type) {
	case nil:
		return 0
	case int64:
		return int(v)
	case int:
		return v
	default:
		r.Failf(k, "must be an integer")
		return 0
	}
}

// Strings is k as a list of strings; a single string is a list of one.
func (r *Reader) Strings(k string) []string {
	switch v := r.M[k].(type) {
	case nil:
		return nil
	case string:
		return []string{v}
	case []string:
		return v
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			} else {
				r.Failf(k, "must list strings")
			}
		}
		return out
	}
	r.Failf(k, "must be a list of strings")
	return nil
}

// Table is k as a sub-table read by its own Reader (empty when unset).
func (r *Reader) Table(k string) *Reader {
	sub := &Reader{Path: r.Path + "." + k, errs: r.errs}
	switch v := r.M[k].(type) {
	case nil:
	case map[string]any:
		sub.M = v
	default:
		r.Failf(k, "must be a table")
	}
	return sub
}

// Tables is k as a table of named sub-tables, each read by its own
// Reader, by name.
func (r *Reader) Tables(k string) map[string]*Reader {
	t := r.Table(k)
	if t.M == nil {
		return nil
	}
	out := map[string]*Reader{}
	for name := range t.M {
		out[name] = t.Table(name)
	}
	return out
}

// Secret is k or, when k is unset, the content of the file k_file names
// (surrounding white space trimmed).
func (r *Reader) Secret(k string) string {
	if s := r.String(k); s != "" {
		return s
	}
	f := r.String(k + "_file")
	if f == "" {
		return ""
	}
	b, err := os.ReadFile(f)
	if err != nil {
		r.Failf(k+"_file", "%v", err)
		return ""
	}
	return strings.TrimSpace(string(b))
}
