package controller

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/usher-vm/usher/api"
)

func TestKnownLNMsPersistInBatches(t *testing.T) {
	p := filepath.Join(t.TempDir(), "known.json")
	k, err := LoadKnownLNMs(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"b", "a", "c"} {
		if err := k.Record(api.NodeInfo{Name: n, Recovery: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Flush(); err != nil {
		t.Fatal(err)
	}
	k2, err := LoadKnownLNMs(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	got := k2.List()
	if len(got) != 3 || got[0].Name != "a" || got[2].Recovery != "127.0.0.1:1" {
		t.Fatalf("reloaded %+v", got)
	}
	if _, err := LoadKnownLNMs(filepath.Join(t.TempDir(), "missing.json"), slog.Default()); err != nil {
		t.Fatalf("missing file: %v", err)
	}
}
