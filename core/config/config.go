package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind is the type of a configuration parameter.
type Kind int

const (
	String   Kind = iota // string
	Int                  // int
	Bool                 // bool
	Duration             // time.Duration; written "5s" in files and flags
	Float                // float64
	Strings              // []string; a TOML array, or comma-separated text
	Map                  // map[string]any; a free-form TOML table
)

func (k Kind) String() string {
	switch k {
	case String:
		return "string"
	case Int:
		return "int"
	case Bool:
		return "bool"
	case Duration:
		return "duration"
	case Float:
		return "float"
	case Strings:
		return "strings"
	case Map:
		return "map"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// expect describes what a value of kind k looks like, for error messages.
func (k Kind) expect() string {
	switch k {
	case String:
		return "a string"
	case Int:
		return "an integer"
	case Bool:
		return "a boolean (true or false)"
	case Duration:
		return `a duration string such as "30s" or "1m30s"`
	case Float:
		return "a number"
	case Strings:
		return "a list of strings"
	case Map:
		return "a table"
	}
	return k.String()
}

// Param declares one configuration parameter.
//
// Key is dotted ("controller.listen"); every segment must be a TOML bare key
// ([A-Za-z0-9_-]+). Default must match Kind: string, int (any integer
// type), bool, time.Duration, float64 (integers accepted), []string or
// map[string]any; nil means the zero value.
type Param struct {
	Key     string
	Kind    Kind
	Default any
	Help    string
}

// Source priorities: a value is only replaced by one of equal or higher
// priority.
const (
	prioDefault = iota
	prioFile
	prioEnv
	prioFlag
)

// SourceDefault is what Source reports for a value nobody has set.
const SourceDefault = "default"

type entry struct {
	p    Param
	val  any // normalised: string, int, bool, time.Duration, float64, []string, map[string]any
	src  string
	prio int
}

// Set holds a group of parameters and their effective values. All methods
// are safe for concurrent use.
type Set struct {
	mu      sync.RWMutex
	entries map[string]*entry
	files   []string
}

// New returns a Set holding params at their defaults. It panics on a
// duplicate or malformed key or a default of the wrong type.
func New(params ...Param) *Set {
	s := &Set{entries: make(map[string]*entry)}
	s.Add(params...)
	return s
}

// Add registers more parameters. It panics like New.
func (s *Set) Add(params ...Param) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries == nil {
		s.entries = make(map[string]*entry)
	}
	for _, p := range params {
		if err := validKey(p.Key); err != nil {
			panic(fmt.Sprintf("config: param %q: %v", p.Key, err))
		}
		if p.Kind < String || p.Kind > Map {
			panic(fmt.Sprintf("config: param %q: invalid kind %d", p.Key, int(p.Kind)))
		}
		if _, dup := s.entries[p.Key]; dup {
			panic(fmt.Sprintf("config: duplicate param %q", p.Key))
		}
		for k := range s.entries {
			if strings.HasPrefix(k, p.Key+".") || strings.HasPrefix(p.Key, k+".") {
				panic(fmt.Sprintf("config: param %q conflicts with %q (one would be a table of the other)", p.Key, k))
			}
		}
		v, err := coerce(p.Kind, p.Default, true)
		if err != nil {
			panic(fmt.Sprintf("config: param %q: bad default %#v: %v", p.Key, p.Default, err))
		}
		p.Default = cloneValue(v)
		s.entries[p.Key] = &entry{p: p, val: v, src: SourceDefault, prio: prioDefault}
	}
}

func validKey(key string) error {
	if key == "" {
		return fmt.Errorf("empty key")
	}
	for _, seg := range strings.Split(key, ".") {
		if seg == "" {
			return fmt.Errorf("empty key segment")
		}
		if !isBareKey(seg) {
			return fmt.Errorf("key segment %q must match [A-Za-z0-9_-]+", seg)
		}
	}
	return nil
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// DefaultPaths returns the configuration files to read, in order:
// /etc/usher/usher.toml, <os.UserConfigDir()>/usher/usher.toml (omitted if
// there is no user config dir), then $USHER_CONFIG if set.
func DefaultPaths() []string {
	paths := []string{"/etc/usher/usher.toml"}
	if dir, err := os.UserConfigDir(); err == nil && dir != "" {
		paths = append(paths, filepath.Join(dir, "usher", "usher.toml"))
	}
	if env := os.Getenv("USHER_CONFIG"); env != "" {
		paths = append(paths, env)
	}
	return paths
}

// Params returns all parameters sorted by key, with their declared defaults.
func (s *Set) Params() []Param {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Param, 0, len(s.entries))
	for _, e := range s.entries {
		p := e.p
		p.Default = cloneValue(p.Default)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Lookup returns the declaration of key.
func (s *Set) Lookup(key string) (Param, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.entries[key]
	if !ok {
		return Param{}, false
	}
	p := e.p
	p.Default = cloneValue(p.Default)
	return p, true
}

// Files returns the configuration files that were actually read, in order.
func (s *Set) Files() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]string(nil), s.files...)
}

func (s *Set) get(key string, kind Kind) any {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.entries[key]
	if !ok {
		panic(fmt.Sprintf("config: unknown param %q", key))
	}
	if e.p.Kind != kind {
		panic(fmt.Sprintf("config: param %q is %v, not %v", key, e.p.Kind, kind))
	}
	return cloneValue(e.val)
}

// Value returns a copy of key's effective value (see Param for the types).
// It panics on an unknown key.
func (s *Set) Value(key string) any {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.entries[key]
	if !ok {
		panic(fmt.Sprintf("config: unknown param %q", key))
	}
	return cloneValue(e.val)
}

// Source reports where key's effective value came from: "default", the
// path of a configuration file (several, comma-separated, for a Map merged
// from several files), "env NAME", "flag --name", or whatever source was
// passed to Set. It panics on an unknown key.
func (s *Set) Source(key string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.entries[key]
	if !ok {
		panic(fmt.Sprintf("config: unknown param %q", key))
	}
	return e.src
}

// String returns a String param. Getters panic on an unknown key or a
// parameter of another kind.
func (s *Set) String(key string) string { return s.get(key, String).(string) }

// Int returns an Int param.
func (s *Set) Int(key string) int { return s.get(key, Int).(int) }

// Bool returns a Bool param.
func (s *Set) Bool(key string) bool { return s.get(key, Bool).(bool) }

// Duration returns a Duration param.
func (s *Set) Duration(key string) time.Duration { return s.get(key, Duration).(time.Duration) }

// Float returns a Float param.
func (s *Set) Float(key string) float64 { return s.get(key, Float).(float64) }

// Strings returns a copy of a Strings param.
func (s *Set) Strings(key string) []string { return s.get(key, Strings).([]string) }

// Map returns a deep copy of a Map param. Values inside are string, int64,
// float64, bool, time.Time, []any or map[string]any. It is never nil.
func (s *Set) Map(key string) map[string]any { return s.get(key, Map).(map[string]any) }

// coerce converts v to the normalised Go type for kind. It accepts both the
// types the TOML decoder produces and natural Go types. nil gives the zero
// value only when allowNil is set.
func coerce(kind Kind, v any, allowNil bool) (any, error) {
	if v == nil {
		if !allowNil {
			return nil, fmt.Errorf("expected %s, got nothing", kind.expect())
		}
		switch kind {
		case String:
			return "", nil
		case Int:
			return 0, nil
		case Bool:
			return false, nil
		case Duration:
			return time.Duration(0), nil
		case Float:
			return 0.0, nil
		case Strings:
			return []string{}, nil
		case Map:
			return map[string]any{}, nil
		}
	}
	bad := func() (any, error) {
		return nil, fmt.Errorf("expected %s, got %s", kind.expect(), describe(v))
	}
	switch kind {
	case String:
		if x, ok := v.(string); ok {
			return x, nil
		}
	case Int:
		if _, isDur := v.(time.Duration); isDur {
			return bad()
		}
		if i, ok := toInt64(v); ok {
			if int64(int(i)) != i {
				return nil, fmt.Errorf("integer %d out of range", i)
			}
			return int(i), nil
		}
	case Bool:
		if x, ok := v.(bool); ok {
			return x, nil
		}
	case Duration:
		switch x := v.(type) {
		case time.Duration:
			return x, nil
		case string:
			d, err := time.ParseDuration(x)
			if err != nil {
				return nil, fmt.Errorf("expected %s, got %q", kind.expect(), x)
			}
			return d, nil
		}
	case Float:
		switch x := v.(type) {
		case float64:
			return x, nil
		case float32:
			return float64(x), nil
		case time.Duration:
			return bad()
		}
		if i, ok := toInt64(v); ok {
			return float64(i), nil
		}
	case Strings:
		switch x := v.(type) {
		case []string:
			return append([]string{}, x...), nil
		case []any:
			out := make([]string, 0, len(x))
			for _, el := range x {
				str, ok := el.(string)
				if !ok {
					return nil, fmt.Errorf("expected %s, got a list containing %s", kind.expect(), describe(el))
				}
				out = append(out, str)
			}
			return out, nil
		}
	case Map:
		if x, ok := v.(map[string]any); ok {
			n, err := normalize(x)
			if err != nil {
				return nil, err
			}
			return n.(map[string]any), nil
		}
	}
	return bad()
}

func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint:
		if uint64(x) <= math.MaxInt64 {
			return int64(x), true
		}
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

// normalize deep-copies a free-form value into the types the TOML decoder
// produces: string, int64, float64, bool, time.Time, []any, map[string]any.
func normalize(v any) (any, error) {
	switch x := v.(type) {
	case string, bool, float64, int64, time.Time:
		return x, nil
	case float32:
		return float64(x), nil
	case time.Duration:
		return x.String(), nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, el := range x {
			n, err := normalize(el)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = n
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, el := range x {
			n, err := normalize(el)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case []map[string]any:
		out := make([]any, len(x))
		for i, el := range x {
			n, err := normalize(el)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case []string:
		out := make([]any, len(x))
		for i, el := range x {
			out[i] = el
		}
		return out, nil
	}
	if i, ok := toInt64(v); ok {
		return i, nil
	}
	return nil, fmt.Errorf("unsupported value %s", describe(v))
}

// cloneValue deep-copies a normalised value.
func cloneValue(v any) any {
	switch x := v.(type) {
	case []string:
		return append([]string{}, x...)
	case []any:
		out := make([]any, len(x))
		for i, el := range x {
			out[i] = cloneValue(el)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, el := range x {
			out[k] = cloneValue(el)
		}
		return out
	}
	return v
}

// mergeMap deep-merges src into dst: tables merge key by key, anything else
// replaces.
func mergeMap(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeMap(dm, sm)
				continue
			}
		}
		dst[k] = cloneValue(v)
	}
}

// describe names a decoded value's type for error messages.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("string %q", truncate(x, 40))
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case int64, int:
		return fmt.Sprintf("integer %v", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case time.Duration:
		return fmt.Sprintf("duration %v", x)
	case time.Time:
		return "datetime " + formatValue(x)
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// setValue installs an already-coerced value. Map values merge into the
// current one. The caller holds s.mu.
func (s *Set) setValueLocked(e *entry, v any, src string, prio int) {
	if prio < e.prio {
		return
	}
	if e.p.Kind == Map {
		cur := e.val.(map[string]any)
		nv := cloneValue(cur).(map[string]any)
		mergeMap(nv, v.(map[string]any))
		e.val = nv
		switch {
		case e.src == SourceDefault || e.prio != prio || prio != prioFile:
			e.src = src
		case !containsSource(e.src, src):
			e.src += ", " + src
		}
	} else {
		e.val = v
		e.src = src
	}
	e.prio = prio
}

func containsSource(list, src string) bool {
	for _, s := range strings.Split(list, ", ") {
		if s == src {
			return true
		}
	}
	return false
}

func sourcePrio(src string) int {
	switch {
	case strings.HasPrefix(src, "flag"):
		return prioFlag
	case strings.HasPrefix(src, "env"):
		return prioEnv
	case src == SourceDefault:
		return prioDefault
	}
	return prioFile
}

// Set parses value as text (as given on a command line) and installs it
// with the given source. Durations are "5s"; Strings are comma-separated
// (blank items dropped); Bools are anything strconv.ParseBool accepts; Maps
// are TOML ("quota.max_vms = 5" or "{quota = {max_vms = 5}}") and merge into
// the current value.
//
// A source starting with "flag" ranks above one starting with "env", which
// ranks above anything else (files); a value is never replaced by one of
// lower rank, so a file loaded after flags were applied does not override
// them.
func (s *Set) Set(key, value, source string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return fmt.Errorf("config: unknown key %q%s", key, s.suggestLocked(key))
	}
	v, err := parseText(e.p.Kind, value)
	if err != nil {
		return fmt.Errorf("config: %s: key %q: %v", source, key, err)
	}
	s.setValueLocked(e, v, source, sourcePrio(source))
	return nil
}

// LoadEnv sets every parameter whose environment variable is set. The
// variable for controller.listen with prefix "USHER_" is
// USHER_CONTROLLER_LISTEN ('.' and '-' become '_', letters upper-case).
// Values are parsed as in Set; the source is "env NAME".
func (s *Set) LoadEnv(prefix string) error {
	var errs []string
	for _, p := range s.Params() {
		name := EnvName(prefix, p.Key)
		if val, ok := os.LookupEnv(name); ok {
			if err := s.Set(p.Key, val, "env "+name); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

// EnvName returns the environment variable LoadEnv consults for key.
func EnvName(prefix, key string) string {
	return prefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}
