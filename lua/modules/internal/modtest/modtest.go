// Package modtest runs a probe script with given modules for the module
// packages' tests: a host over one script with a timer, fired once.
//
// Only tests import it; it may import lua and testing.
package modtest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/usher-vm/usher/lua"
)

// Run loads src as the script probe.lua of a host with mods and fires
// its timers once; the script signals failure with error(). The host is
// closed when the test ends.
func Run(t testing.TB, mods []lua.Module, src string) (*lua.Host, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.lua"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := lua.New(lua.Options{Dirs: []string{dir}, Modules: mods, PoolSize: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h, h.RunTimers(context.Background(), "probe")
}
