package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// maxErrors caps how many problems one file reports.
const maxErrors = 20

// LoadFiles reads the given TOML files in order, later files replacing
// values set by earlier ones (Map params deep-merge). A file that does not
// exist is skipped silently — except the file named by $USHER_CONFIG, which
// the user asked for explicitly and so must exist. A file with any error
// (syntax, unknown key, wrong type) changes nothing; LoadFiles stops at the
// first such file.
func (s *Set) LoadFiles(paths ...string) error {
	explicit := os.Getenv("USHER_CONFIG")
	for _, p := range paths {
		if err := s.loadFile(p, explicit != "" && p == explicit); err != nil {
			return err
		}
	}
	return nil
}

// LoadFile reads one TOML file, which must exist. See LoadFiles.
func (s *Set) LoadFile(path string) error {
	return s.loadFile(path, true)
}

func (s *Set) loadFile(path string, mustExist bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !mustExist {
			return nil
		}
		if errors.Is(err, fs.ErrNotExist) && path == os.Getenv("USHER_CONFIG") {
			return fmt.Errorf("config: $USHER_CONFIG names %s, which does not exist", path)
		}
		return fmt.Errorf("config: %w", err)
	}
	return s.loadBytes(path, data)
}

type update struct {
	e   *entry
	val any
}

// loadBytes applies the TOML document data as if read from path.
func (s *Set) loadBytes(path string, data []byte) error {
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		return fmt.Errorf("config: %s: %v", path, err)
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(path); err == nil {
		dir = filepath.Dir(abs)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var ups []update
	var errs []string
	s.walkLocked(path, dir, "", tree, &ups, &errs)
	if len(errs) > 0 {
		if len(errs) > maxErrors {
			errs = append(errs[:maxErrors], fmt.Sprintf("config: %s: ... and %d more errors", path, len(errs)-maxErrors))
		}
		return errors.New(strings.Join(errs, "\n"))
	}
	for _, u := range ups {
		s.setValueLocked(u.e, u.val, path, prioFile)
	}
	s.files = append(s.files, path)
	return nil
}

func (s *Set) walkLocked(path, dir, prefix string, tbl map[string]any, ups *[]update, errs *[]string) {
	keys := make([]string, 0, len(tbl))
	for k := range tbl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if len(*errs) > maxErrors {
			return
		}
		v := tbl[k]
		full := k
		if prefix != "" {
			full = prefix + "." + k
		}
		if e, ok := s.entries[full]; ok {
			val, err := coerce(e.p.Kind, v, false)
			if err != nil {
				*errs = append(*errs, fmt.Sprintf("config: %s: key %q: %v", path, full, err))
				continue
			}
			if e.p.Kind == String && IsPathKey(full) {
				val = resolvePath(dir, val.(string))
			}
			*ups = append(*ups, update{e, val})
			continue
		}
		sub, isTable := v.(map[string]any)
		if isTable && s.hasSectionLocked(full) {
			s.walkLocked(path, dir, full, sub, ups, errs)
			continue
		}
		if isTable && len(sub) > 0 {
			// Unknown table: report its leaves, which gives better
			// suggestions ("controler.listen" → "controller.listen").
			for _, leaf := range leaves(full, sub) {
				*errs = append(*errs, s.unknownLocked(path, leaf))
			}
			continue
		}
		*errs = append(*errs, s.unknownLocked(path, full))
	}
}

func (s *Set) unknownLocked(path, key string) string {
	return fmt.Sprintf("config: %s: unknown key %q%s", path, key, s.suggestLocked(key))
}

func leaves(prefix string, tbl map[string]any) []string {
	var out []string
	keys := make([]string, 0, len(tbl))
	for k := range tbl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		full := prefix + "." + k
		if sub, ok := tbl[k].(map[string]any); ok && len(sub) > 0 {
			out = append(out, leaves(full, sub)...)
		} else {
			out = append(out, full)
		}
		if len(out) > maxErrors {
			break
		}
	}
	return out
}

func (s *Set) hasSectionLocked(section string) bool {
	for k := range s.entries {
		if strings.HasPrefix(k, section+".") {
			return true
		}
	}
	return false
}

// IsPathKey reports whether a String param with this key holds a file
// system path, which is resolved relative to the configuration file that
// sets it: the key's last segment ends in "_file", "_dir" or "_path", or is
// "file", "dir" or "path".
func IsPathKey(key string) bool {
	last := key[strings.LastIndex(key, ".")+1:]
	switch last {
	case "file", "dir", "path":
		return true
	}
	return strings.HasSuffix(last, "_file") || strings.HasSuffix(last, "_dir") || strings.HasSuffix(last, "_path")
}

func resolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "~") {
		return p
	}
	return filepath.Join(dir, p)
}

// suggestLocked returns ` (did you mean "x"?)` for the known key closest to
// key, or "".
func (s *Set) suggestLocked(key string) string {
	best, bestD := "", 1<<30
	last := key[strings.LastIndex(key, ".")+1:]
	keys := make([]string, 0, len(s.entries))
	for k := range s.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		d := levenshtein(strings.ToLower(key), strings.ToLower(k))
		if k[strings.LastIndex(k, ".")+1:] == last && d > 2 {
			d = 2 // right name, wrong section
		}
		if d < bestD {
			best, bestD = k, d
		}
	}
	limit := len(key) / 3
	if limit < 2 {
		limit = 2
	}
	if best == "" || bestD > limit {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// parseText parses a textual (flag or environment) value.
func parseText(kind Kind, text string) (any, error) {
	switch kind {
	case String:
		return text, nil
	case Int:
		i, err := strconv.ParseInt(strings.TrimSpace(text), 10, 0)
		if err != nil {
			return nil, fmt.Errorf("expected %s, got %q", kind.expect(), text)
		}
		return int(i), nil
	case Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(text))
		if err != nil {
			return nil, fmt.Errorf("expected %s, got %q", kind.expect(), text)
		}
		return b, nil
	case Duration:
		d, err := time.ParseDuration(strings.TrimSpace(text))
		if err != nil {
			return nil, fmt.Errorf("expected %s, got %q", kind.expect(), text)
		}
		return d, nil
	case Float:
		f, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
		if err != nil {
			return nil, fmt.Errorf("expected %s, got %q", kind.expect(), text)
		}
		return f, nil
	case Strings:
		out := []string{}
		for _, item := range strings.Split(text, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
		return out, nil
	case Map:
		t := strings.TrimSpace(text)
		var tree map[string]any
		doc := t
		if strings.HasPrefix(t, "{") {
			doc = "v = " + t
		}
		if _, err := toml.Decode(doc, &tree); err != nil {
			return nil, fmt.Errorf("expected a TOML table such as %q: %v", "quota.max_vms = 5", err)
		}
		if strings.HasPrefix(t, "{") {
			m, ok := tree["v"].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("expected a TOML table")
			}
			tree = m
		}
		return coerce(Map, tree, true)
	}
	return nil, fmt.Errorf("invalid kind %v", kind)
}
