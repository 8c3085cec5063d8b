package site

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core/coretest"

	"github.com/usher-vm/usher/core"
)

// TestSizeHintFile: a missing file is no hint, a damaged one is moved
// aside (the controller logs it and starts without), and keepSizeHint
// writes the state's sizes when it stops.
func TestSizeHintFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state-size.json")
	log := slog.New(slog.DiscardHandler)
	if h := loadSizeHint(p, log); h.VMs != 0 {
		t.Fatalf("missing file: %+v", h)
	}
	os.WriteFile(p, []byte(`{"vms": "many"`), 0o600)
	if h := loadSizeHint(p, log); h.VMs != 0 {
		t.Fatalf("a damaged hint file gave %+v", h)
	}
	if aside, _ := filepath.Glob(p + ".damaged-*"); len(aside) != 1 {
		t.Fatalf("the damaged hint was not moved aside: %v", aside)
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
	h, err := readSizeHint(p)
	if err != nil || h.VMs != 1234 || h.Owners["alice"] != 1000 {
		t.Fatalf("read back %+v, %v", h, err)
	}
}

type fakeSizer struct{ h core.SizeHint }

func (f *fakeSizer) Counts() api.Counts      { return api.Counts{VMs: f.h.VMs} }
func (f *fakeSizer) SizeHint() core.SizeHint { return f.h }

// TestGCPercentRaisedWhileRecovering: a restarted controller collects
// less often until its state is whole, then as before.
func TestGCPercentRaisedWhileRecovering(t *testing.T) {
	gcPercent := func() int { p := debug.SetGCPercent(100); debug.SetGCPercent(p); return p }
	before := gcPercent()
	c := core.New(core.Config{Domain: "usher.test"}, coretest.New(nil))
	c.ExpectLNMs([]api.NodeInfo{{Name: "n1"}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	raised := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		gcWhileRecovering(ctx, c, 777, slog.New(slog.DiscardHandler), raised)
	}()
	<-raised
	if got := gcPercent(); got != 777 {
		t.Fatalf("GC percent while recovering: %d, want 777", got)
	}
	c.EndGrace() // the state is whole: n1 is declared failed
	<-done
	if got := gcPercent(); got != before {
		t.Fatalf("GC percent %d after recovery, want %d back", got, before)
	}
}
