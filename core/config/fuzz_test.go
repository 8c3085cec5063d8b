package config

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes as a configuration file. Loading must
// never panic; whatever loads must show, and must survive a WriteTOML /
// LoadFile round trip.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("[controller]\nlisten = \":1\"\ntimeout = \"5s\"\n"))
	f.Add([]byte("[policy.config.quota]\nmax_vms = 5\nwhen = 1979-05-27T07:32:00\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		s := New(testParams()...)
		if err := s.loadBytes(filepath.Join(dir, "fuzz.toml"), data); err != nil {
			return
		}
		s.Show(io.Discard, "")
		values := map[string]any{}
		for _, p := range s.Params() {
			values[p.Key] = s.Value(p.Key)
		}
		var buf bytes.Buffer
		if err := s.WriteTOML(&buf, values); err != nil {
			t.Fatalf("WriteTOML after successful load: %v", err)
		}
		p := filepath.Join(t.TempDir(), "rt.toml")
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := New(testParams()...).LoadFile(p); err != nil {
			t.Fatalf("reload of written config failed: %v\ninput: %q\nwritten:\n%s", err, data, buf.String())
		}
	})
}
