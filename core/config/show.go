package config

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Redacted is what Show prints instead of a secret's value.
const Redacted = "<redacted>"

// IsSecretKey reports whether values under key are hidden by Show: its last
// segment ends in "password" or "secret" (case-insensitive).
func IsSecretKey(key string) bool {
	last := strings.ToLower(key[strings.LastIndex(key, ".")+1:])
	return strings.HasSuffix(last, "password") || strings.HasSuffix(last, "secret")
}

// Show writes every param whose key starts with prefix ("" for all),
// sorted by key, one per line:
//
//	controller.listen = ":7000"      # /etc/usher/usher.toml
//	controller.timeout = "30s"       # default
//
// Values are TOML (durations as quoted strings, Maps as inline tables), so
// apart from redaction the output is itself a loadable TOML file. Non-empty
// secrets (see IsSecretKey), including secret keys inside Map values, are
// printed as <redacted>.
func (s *Set) Show(w io.Writer, prefix string) {
	type line struct{ left, src string }
	var lines []line
	s.mu.RLock()
	for k, e := range s.entries {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		var val string
		switch {
		case IsSecretKey(k) && !isZero(e.val):
			val = Redacted
		case e.p.Kind == Map:
			val = formatValue(redactMap(e.val.(map[string]any)))
		default:
			val = formatValue(e.val)
		}
		lines = append(lines, line{k + " = " + val, e.src})
	}
	s.mu.RUnlock()
	sort.Slice(lines, func(i, j int) bool { return lines[i].left < lines[j].left })
	width := 0
	for _, l := range lines {
		if n := utf8.RuneCountInString(l.left); n > width && n <= 56 {
			width = n
		}
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.left)
		if pad := width - utf8.RuneCountInString(l.left); pad > 0 {
			b.WriteString(strings.Repeat(" ", pad))
		}
		b.WriteString("   # ")
		b.WriteString(l.src)
		b.WriteByte('\n')
	}
	io.WriteString(w, b.String())
}

// redacted stands in for a secret inside a Map; formatValue prints it bare.
type redacted struct{}

func redactMap(m map[string]any) any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case map[string]any:
			out[k] = redactMap(x)
		default:
			if IsSecretKey(k) {
				out[k] = redacted{}
			} else {
				out[k] = v
			}
		}
	}
	return out
}

// WriteTOML writes values (dotted keys of this Set's params) as a TOML file
// that LoadFiles reads back to the same values. Values may be of the
// param's Go type (e.g. time.Duration, []string, map[string]any) or
// anything LoadFiles would accept for it; unknown keys and wrong types are
// errors, and nothing is written then. Relative paths are written as given
// and so will be resolved against the written file's directory.
func (s *Set) WriteTOML(w io.Writer, values map[string]any) error {
	tables := map[string][]string{} // table path → "key = value" lines
	s.mu.RLock()
	for key, v := range values {
		e, ok := s.entries[key]
		if !ok {
			s.mu.RUnlock()
			return fmt.Errorf("config: WriteTOML: unknown key %q%s", key, s.suggestLocked(key))
		}
		val, err := coerce(e.p.Kind, v, true)
		if err != nil {
			s.mu.RUnlock()
			return fmt.Errorf("config: WriteTOML: key %q: %v", key, err)
		}
		table, leaf := "", key
		if i := strings.LastIndexByte(key, '.'); i >= 0 {
			table, leaf = key[:i], key[i+1:]
		}
		tables[table] = append(tables[table], leaf+" = "+formatValue(val))
	}
	s.mu.RUnlock()
	names := make([]string, 0, len(tables))
	for t := range tables {
		names = append(names, t)
	}
	sort.Strings(names) // "" (top level) sorts first, as TOML requires
	var b strings.Builder
	for i, t := range names {
		lines := tables[t]
		sort.Strings(lines)
		if t != "" {
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString("[" + t + "]\n")
		}
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatValue renders a normalised value as a TOML value.
func formatValue(v any) string {
	switch x := v.(type) {
	case nil:
		return `""`
	case redacted:
		return Redacted
	case string:
		return quote(x)
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return formatFloat(x)
	case time.Duration:
		return quote(x.String())
	case time.Time:
		switch x.Location().String() {
		case "datetime-local":
			return x.Format("2006-01-02T15:04:05.999999999")
		case "date-local":
			return x.Format("2006-01-02")
		case "time-local":
			return x.Format("15:04:05.999999999")
		}
		return x.Format(time.RFC3339Nano)
	case []string:
		parts := make([]string, len(x))
		for i, s := range x {
			parts[i] = quote(s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []any:
		parts := make([]string, len(x))
		for i, el := range x {
			parts[i] = formatValue(el)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []map[string]any:
		parts := make([]string, len(x))
		for i, el := range x {
			parts[i] = formatValue(el)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = formatKey(k) + " = " + formatValue(x[k])
		}
		if len(parts) == 0 {
			return "{}"
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	if i, ok := toInt64(v); ok {
		return strconv.FormatInt(i, 10)
	}
	return quote(fmt.Sprint(v))
}

func formatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

func formatKey(k string) string {
	if isBareKey(k) {
		return k
	}
	return quote(k)
}

// quote renders s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r) // invalid UTF-8 becomes U+FFFD
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
