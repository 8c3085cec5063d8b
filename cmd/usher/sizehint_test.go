package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/usher-vm/usher/core"
)

// TestSizeHintFile: a missing file is no hint, a damaged one an error
// (the controller logs it and starts without), and keepSizeHint writes the
// state's sizes when it stops (over the damaged file).
func TestSizeHintFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state-size.json")
	if h, err := loadSizeHint(p); err != nil || h.VMs != 0 {
		t.Fatalf("missing file: %+v, %v", h, err)
	}
	os.WriteFile(p, []byte(`{"vms": "many"`), 0o600)
	if _, err := loadSizeHint(p); err == nil {
		t.Fatal("a damaged hint file read without error")
	}
	st := &fakeSizer{h: core.SizeHint{VMs: 1234, Owners: map[string]int{"alice": 1000}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		keepSizeHint(ctx, st, p, 0, slog.New(slog.DiscardHandler))
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("keepSizeHint did not return when its context ended")
	}
	h, err := loadSizeHint(p)
	if err != nil || h.VMs != 1234 || h.Owners["alice"] != 1000 {
		t.Fatalf("read back %+v, %v", h, err)
	}
}

type fakeSizer struct{ h core.SizeHint }

func (f *fakeSizer) Counts() core.Counts     { return core.Counts{VMs: f.h.VMs} }
func (f *fakeSizer) SizeHint() core.SizeHint { return f.h }
