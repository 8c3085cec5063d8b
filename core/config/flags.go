package config

import (
	"flag"
	"fmt"
	"sort"
	"strings"
)

// FlagName returns the flag BindFlags registers for key: the part after the
// first dot, with '_' and any further '.' turned into '-'
// (controller.listen → listen, lnm.libvirt_socket → libvirt-socket). A key
// without a dot is used whole.
func FlagName(key string) string {
	if i := strings.IndexByte(key, '.'); i >= 0 {
		key = key[i+1:]
	}
	return strings.NewReplacer("_", "-", ".", "-").Replace(key)
}

// flagValue is the flag.Value BindFlags registers. It validates on Parse
// and remembers the parsed value until ApplyFlags.
type flagValue struct {
	s    *Set
	key  string
	kind Kind
	val  any
	text string
	set  bool
}

func (f *flagValue) String() string {
	if f == nil || !f.set {
		return ""
	}
	return f.text
}

func (f *flagValue) Set(text string) error {
	v, err := parseText(f.kind, text)
	if err != nil {
		return err
	}
	if f.set {
		// Repeated flags accumulate for lists and tables.
		switch f.kind {
		case Strings:
			v = append(f.val.([]string), v.([]string)...)
			text = f.text + "," + text
		case Map:
			m := f.val.(map[string]any)
			mergeMap(m, v.(map[string]any))
			v = m
			text = f.text + "; " + text
		}
	}
	f.val, f.text, f.set = v, text, true
	return nil
}

func (f *flagValue) Get() any { return cloneValue(f.val) }

func (f *flagValue) IsBoolFlag() bool { return f.kind == Bool }

// BindFlags registers a flag on fs for each key (see FlagName). A key
// ending in "." binds every param in that section ("controller."). The
// usage text is the param's Help plus " (default X)", X being the value in
// effect when BindFlags is called. Bool flags may be given bare (--debug);
// Strings flags take comma-separated values and accumulate when repeated;
// Map flags take TOML ("quota.max_vms=5") and merge.
//
// After fs.Parse, call ApplyFlags to copy the flags that were actually set.
// BindFlags panics on an unknown key or a flag name already defined on fs.
func (s *Set) BindFlags(fs *flag.FlagSet, keys ...string) {
	var expanded []string
	for _, k := range keys {
		if strings.HasSuffix(k, ".") {
			n := 0
			for _, p := range s.Params() {
				if strings.HasPrefix(p.Key, k) {
					expanded = append(expanded, p.Key)
					n++
				}
			}
			if n == 0 {
				panic(fmt.Sprintf("config: BindFlags: no params in section %q", k))
			}
			continue
		}
		expanded = append(expanded, k)
	}
	for _, key := range expanded {
		s.mu.RLock()
		e, ok := s.entries[key]
		var p Param
		var cur any
		if ok {
			p, cur = e.p, cloneValue(e.val)
		}
		s.mu.RUnlock()
		if !ok {
			panic(fmt.Sprintf("config: BindFlags: unknown param %q", key))
		}
		name := FlagName(key)
		if fs.Lookup(name) != nil {
			panic(fmt.Sprintf("config: BindFlags: flag --%s (for %q) already defined", name, key))
		}
		usage := p.Help
		if !isZero(cur) {
			if usage != "" {
				usage += " "
			}
			usage += "(default " + flagText(cur) + ")"
		}
		fs.Var(&flagValue{s: s, key: key, kind: p.Kind}, name, usage)
	}
}

// ApplyFlags copies every flag on fs that was bound by this Set and set on
// the command line into the Set, with source "flag --name".
func (s *Set) ApplyFlags(fs *flag.FlagSet) error {
	type set struct {
		name string
		fv   *flagValue
	}
	var todo []set
	fs.Visit(func(f *flag.Flag) {
		if fv, ok := f.Value.(*flagValue); ok && fv.s == s && fv.set {
			todo = append(todo, set{f.Name, fv})
		}
	})
	sort.Slice(todo, func(i, j int) bool { return todo[i].name < todo[j].name })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range todo {
		e, ok := s.entries[t.fv.key]
		if !ok {
			return fmt.Errorf("config: flag --%s: unknown key %q", t.name, t.fv.key)
		}
		s.setValueLocked(e, cloneValue(t.fv.val), "flag --"+t.name, prioFlag)
	}
	return nil
}

func isZero(v any) bool {
	switch x := v.(type) {
	case string:
		return x == ""
	case []string:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case bool:
		return !x
	case nil:
		return true
	}
	return false
}

// flagText formats a value the way it would be typed on a command line.
func flagText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []string:
		return strings.Join(x, ",")
	case map[string]any:
		return formatValue(x)
	}
	return fmt.Sprint(v)
}
