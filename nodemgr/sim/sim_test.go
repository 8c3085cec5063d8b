package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/nodemgr"
)

const waitFor = 5 * time.Second

func newHV(t testing.TB, opts Options) *Hypervisor {
	t.Helper()
	if opts.Node == "" {
		opts.Node = "n1"
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func spec(name string, mem, vcpus int) nodemgr.Spec {
	return nodemgr.Spec{Name: name, MemMB: mem, VCPUs: vcpus}
}

// nextEvent returns the next event, failing the test after waitFor.
func nextEvent(t *testing.T, h *Hypervisor) nodemgr.GuestEvent {
	t.Helper()
	select {
	case ev, ok := <-h.Events():
		if !ok {
			t.Fatal("events channel closed")
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event within", waitFor)
	}
	return nodemgr.GuestEvent{}
}

func expectEvent(t *testing.T, h *Hypervisor, want nodemgr.GuestEvent) {
	t.Helper()
	if got := nextEvent(t, h); got != want {
		t.Fatalf("event = %+v, want %+v", got, want)
	}
}

// noEvent asserts that no event is queued (events are sent before the
// call that causes them returns, so nothing can arrive later).
func noEvent(t *testing.T, h *Hypervisor) {
	t.Helper()
	select {
	case ev := <-h.Events():
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

func list(t *testing.T, h *Hypervisor) map[string]nodemgr.GuestInfo {
	t.Helper()
	ds, err := h.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]nodemgr.GuestInfo, len(ds))
	for _, d := range ds {
		m[d.Name] = d
	}
	return m
}

func stateOf(t *testing.T, h *Hypervisor, name string) api.VMState {
	t.Helper()
	d, ok := list(t, h)[name]
	if !ok {
		return ""
	}
	return d.State
}

func mustStart(t *testing.T, h *Hypervisor, s nodemgr.Spec) {
	t.Helper()
	if err := h.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, h, nodemgr.GuestEvent{Name: s.Name, State: api.StateRunning, Reason: "booted"})
}

func mustOp(t *testing.T, h *Hypervisor, name string, op api.Op) {
	t.Helper()
	if err := h.Op(context.Background(), name, op, nodemgr.OpOptions{}); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, h)
}

// into brings a fresh guest "vm" into state s.
func into(t *testing.T, h *Hypervisor, s api.VMState) {
	t.Helper()
	mustStart(t, h, spec("vm", 1024, 1))
	switch s {
	case api.StatePaused:
		mustOp(t, h, "vm", api.OpPause)
	case api.StateShutoff:
		mustOp(t, h, "vm", api.OpShutdown)
	case api.StateHibernated:
		mustOp(t, h, "vm", api.OpHibernate)
	case api.StateCrashed:
		if err := h.Crash("vm"); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, h, nodemgr.GuestEvent{Name: "vm", State: api.StateCrashed, Reason: "crashed"})
	}
	if got := stateOf(t, h, "vm"); got != s {
		t.Fatalf("setup: state %q, want %q", got, s)
	}
}

func TestOpTransitions(t *testing.T) {
	R, P, S, H, C := api.StateRunning, api.StatePaused, api.StateShutoff, api.StateHibernated, api.StateCrashed
	const gone = api.VMState("gone")
	type res struct {
		to     api.VMState // "" = invalid
		reason string
	}
	table := map[api.Op]map[api.VMState]res{
		api.OpPause:     {R: {P, "paused"}},
		api.OpResume:    {P: {R, "resumed"}},
		api.OpShutdown:  {R: {S, "shutdown"}, P: {S, "shutdown"}},
		api.OpReboot:    {R: {R, "rebooted"}, P: {R, "rebooted"}},
		api.OpHibernate: {R: {H, "hibernated"}, P: {H, "hibernated"}},
		api.OpRestore:   {H: {R, "restored"}},
		api.OpDestroy:   {R: {gone, "destroyed"}, P: {gone, "destroyed"}, S: {gone, "destroyed"}, H: {gone, "destroyed"}, C: {gone, "destroyed"}},
		api.OpCycle:     {R: {R, "cycled"}, P: {R, "cycled"}, S: {R, "cycled"}, H: {R, "cycled"}, C: {R, "cycled"}},
	}
	for _, op := range api.Ops() {
		for _, from := range []api.VMState{R, P, S, H, C} {
			t.Run(fmt.Sprintf("%s_from_%s", op, from), func(t *testing.T) {
				h := newHV(t, Options{})
				into(t, h, from)
				err := h.Op(context.Background(), "vm", op, nodemgr.OpOptions{})
				want, valid := table[op][from]
				if !valid {
					if err == nil {
						t.Fatalf("%s from %s succeeded", op, from)
					}
					msg := fmt.Sprintf("cannot %s: guest is %s", op, from)
					if !strings.Contains(err.Error(), msg) || !errors.Is(err, ErrInvalidTransition) {
						t.Fatalf("error %q, want it to contain %q and match ErrInvalidTransition", err, msg)
					}
					if got := stateOf(t, h, "vm"); got != from {
						t.Fatalf("state after refused op = %q, want %q", got, from)
					}
					noEvent(t, h)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if want.to == gone {
					expectEvent(t, h, nodemgr.GuestEvent{Name: "vm", Gone: true, Reason: want.reason})
					if _, ok := list(t, h)["vm"]; ok {
						t.Fatal("destroyed guest still listed")
					}
					return
				}
				expectEvent(t, h, nodemgr.GuestEvent{Name: "vm", State: want.to, Reason: want.reason})
				if got := list(t, h)["vm"]; got.State != want.to || got.Reason != want.reason {
					t.Fatalf("listed %+v, want state %q reason %q", got, want.to, want.reason)
				}
			})
		}
	}
}

func TestUnknownDomainAndOp(t *testing.T) {
	h := newHV(t, Options{})
	ctx := context.Background()
	for _, err := range []error{
		h.Op(ctx, "nope", api.OpPause, nodemgr.OpOptions{}),
		h.Migrate(ctx, "nope", "n2", "addr"),
		h.Crash("nope"),
		h.Vanish("nope"),
	} {
		if err == nil || !strings.Contains(err.Error(), "no such guest") || !errors.Is(err, ErrNoSuchGuest) {
			t.Errorf("error %v, want no such guest", err)
		}
	}
	mustStart(t, h, spec("vm", 512, 1))
	if err := h.Op(ctx, "vm", api.Op("explode"), nodemgr.OpOptions{}); err == nil || !strings.Contains(err.Error(), "unknown operation") {
		t.Fatalf("unknown op: %v", err)
	}
	if err := h.Start(ctx, spec("vm", 512, 1)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate start: %v", err)
	}
	for _, bad := range []nodemgr.Spec{spec("", 1, 1), spec("x", 0, 1), spec("x", 1, 0)} {
		if err := h.Start(ctx, bad); err == nil {
			t.Errorf("Start(%+v) succeeded", bad)
		}
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without Node succeeded")
	}
}

func TestCapacity(t *testing.T) {
	h := newHV(t, Options{CPUs: 4, MemMB: 4096})
	ctx := context.Background()
	mustStart(t, h, spec("a", 2048, 2))
	mustStart(t, h, spec("b", 2048, 1))

	err := h.Start(ctx, spec("c", 1024, 1))
	if err == nil || !errors.Is(err, ErrInsufficientCapacity) {
		t.Fatalf("over-capacity start: %v", err)
	}
	for _, want := range []string{"insufficient capacity", "memory: 0 MiB free, 1024 MiB needed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "vCPUs") {
		t.Errorf("error %q blames vCPUs, which are free", err)
	}
	if _, ok := list(t, h)["c"]; ok {
		t.Fatal("refused guest exists")
	}
	noEvent(t, h)

	// Hibernating a releases its share.
	mustOp(t, h, "a", api.OpHibernate)
	mustStart(t, h, spec("c", 1024, 2))
	// Restoring a now needs 2048 MiB and 2 vCPUs; 1024 MiB and 1 vCPU are free.
	err = h.Op(ctx, "a", api.OpRestore, nodemgr.OpOptions{})
	if err == nil || !strings.Contains(err.Error(), "memory: 1024 MiB free, 2048 MiB needed") ||
		!strings.Contains(err.Error(), "vCPUs: 1 free, 2 needed") {
		t.Fatalf("restore over capacity: %v", err)
	}
	if got := stateOf(t, h, "a"); got != api.StateHibernated {
		t.Fatalf("a is %q after refused restore", got)
	}
	// Destroying c frees room for the restore.
	mustOp(t, h, "c", api.OpDestroy)
	mustOp(t, h, "a", api.OpRestore)

	// vCPUs alone can be short.
	mustOp(t, h, "b", api.OpShutdown) // frees 2048 MiB, 1 vCPU
	err = h.Start(ctx, spec("d", 1024, 3))
	if err == nil || !strings.Contains(err.Error(), "vCPUs: 2 free, 3 needed") || strings.Contains(err.Error(), "memory") {
		t.Fatalf("vCPU shortage: %v", err)
	}
	// A shutoff guest does not hold capacity, but cycling it back does.
	mustStart(t, h, spec("d", 2048, 2))
	err = h.Op(ctx, "b", api.OpCycle, nodemgr.OpOptions{})
	if !errors.Is(err, ErrInsufficientCapacity) {
		t.Fatalf("cycle of shutoff guest on a full node: %v", err)
	}
	// Crashed guests release too.
	if err := h.Crash("d"); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, h)
	mustOp(t, h, "b", api.OpCycle)
}

func TestBootDelayAndCancel(t *testing.T) {
	h := newHV(t, Options{CPUs: 2, MemMB: 2048, BootDelay: 20 * time.Millisecond})
	began := time.Now()
	mustStart(t, h, spec("a", 1024, 1))
	if el := time.Since(began); el < 20*time.Millisecond {
		t.Fatalf("Start returned after %v, before BootDelay", el)
	}

	slow := newHV(t, Options{Node: "slow", CPUs: 2, MemMB: 2048, BootDelay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := slow.Start(ctx, spec("b", 2048, 2)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with expiring ctx: %v", err)
	}
	if len(list(t, slow)) != 0 {
		t.Fatal("cancelled start left a guest")
	}
	noEvent(t, slow)
	// Its reservation is gone: the whole node is free again.
	if err := slow.Appear(spec("c", 2048, 2)); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, slow, nodemgr.GuestEvent{Name: "c", State: api.StateRunning, Reason: "appeared"})

	// An op cut short by ctx changes nothing (ops take BootDelay/4).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if err := slow.Op(ctx2, "c", api.OpPause, nodemgr.OpOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("op with expiring ctx: %v", err)
	}
	if got := stateOf(t, slow, "c"); got != api.StateRunning {
		t.Fatalf("c is %q after cancelled pause", got)
	}
	// Invalid transitions fail without waiting.
	if err := slow.Op(context.Background(), "c", api.OpResume, nodemgr.OpOptions{}); !errors.Is(err, ErrInvalidTransition) {
		t.Fatalf("resume running: %v", err)
	}
	// Migration cut short: the guest keeps running here.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel3()
	if err := slow.Migrate(ctx3, "c", "n2", "n2:1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("migrate with expiring ctx: %v", err)
	}
	if got := stateOf(t, slow, "c"); got != api.StateRunning {
		t.Fatalf("c is %q after cancelled migration", got)
	}
	noEvent(t, slow)
}

func TestMigration(t *testing.T) {
	ctx := context.Background()
	src := newHV(t, Options{Node: "src"})
	dst := newHV(t, Options{Node: "dst", CPUs: 4, MemMB: 4096})
	s := nodemgr.Spec{Name: "vm", MemMB: 2048, VCPUs: 2, Data: map[string]string{"ip": "10.0.0.5"}}
	mustStart(t, src, s)

	if err := dst.PrepareIncoming(ctx, s); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, dst, nodemgr.GuestEvent{Name: "vm", State: api.StateRunning, Reason: "incoming migration"})
	if err := src.Migrate(ctx, "vm", "dst", "dst:7000"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, src, nodemgr.GuestEvent{Name: "vm", Gone: true, Reason: "migrated to dst"})
	if _, ok := list(t, src)["vm"]; ok {
		t.Fatal("source still lists vm")
	}
	if got := list(t, dst)["vm"]; got.State != api.StateRunning || got.MemMB != 2048 || got.VCPUs != 2 {
		t.Fatalf("destination lists %+v", got)
	}
	if err := dst.PrepareIncoming(ctx, s); !errors.Is(err, ErrExists) {
		t.Fatalf("second prepare: %v", err)
	}

	// Prepare is capacity checked; abort releases.
	big := spec("big", 2048, 2)
	if err := dst.PrepareIncoming(ctx, big); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, dst)
	if err := dst.PrepareIncoming(ctx, spec("more", 1, 1)); !errors.Is(err, ErrInsufficientCapacity) {
		t.Fatalf("prepare on a full node: %v", err)
	}
	if err := dst.AbortIncoming(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, dst, nodemgr.GuestEvent{Name: "big", Gone: true, Reason: "incoming migration aborted"})
	if err := dst.PrepareIncoming(ctx, spec("more", 2048, 2)); err != nil {
		t.Fatalf("prepare after abort: %v", err)
	}
	nextEvent(t, dst)
	// Abort of nothing is a no-op; abort of a guest that has since been
	// operated on (adopted) is refused.
	if err := dst.AbortIncoming(ctx, "never"); err != nil {
		t.Fatal(err)
	}
	mustOp(t, dst, "vm", api.OpPause)
	if err := dst.AbortIncoming(ctx, "vm"); err == nil {
		t.Fatal("abort removed an adopted guest")
	}
	// A paused guest can migrate; a shutoff one cannot.
	if err := dst.Migrate(ctx, "vm", "src", "src:7000"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, dst, nodemgr.GuestEvent{Name: "vm", Gone: true, Reason: "migrated to src"})
	mustOp(t, dst, "more", api.OpShutdown)
	if err := dst.Migrate(ctx, "more", "src", "src:7000"); err == nil || !strings.Contains(err.Error(), "cannot migrate: guest is shutoff") {
		t.Fatalf("migrate shutoff: %v", err)
	}
	noEvent(t, dst)
}

func TestPersistence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "n1.json")
	ctx := context.Background()
	h1, err := New(Options{Node: "n1", CPUs: 4, MemMB: 4096, StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	mustStart(t, h1, nodemgr.Spec{Name: "a", MemMB: 2048, VCPUs: 2, Data: map[string]string{"ip": "10.1.1.1"}})
	mustStart(t, h1, spec("b", 1024, 1))
	mustStart(t, h1, spec("c", 1024, 1))
	mustOp(t, h1, "b", api.OpPause)
	mustOp(t, h1, "c", api.OpHibernate)
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h1.Start(ctx, spec("z", 1, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}

	// The file is JSON with everything needed to resume.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var st fileState
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Guests) != 3 || st.Guests[0].Name != "a" || st.Guests[0].Data["ip"] != "10.1.1.1" {
		t.Fatalf("state file: %s", raw)
	}

	h2 := newHV(t, Options{Node: "n1", CPUs: 4, MemMB: 4096, StateFile: file})
	got := list(t, h2)
	want := map[string]api.VMState{"a": api.StateRunning, "b": api.StatePaused, "c": api.StateHibernated}
	if len(got) != len(want) {
		t.Fatalf("resumed %v", got)
	}
	for n, s := range want {
		if got[n].State != s {
			t.Errorf("%s resumed as %q, want %q", n, got[n].State, s)
		}
	}
	// Capacity use was resumed too: a and b hold 3072 MiB, 3 vCPUs.
	if err := h2.Start(ctx, spec("d", 2048, 1)); !errors.Is(err, ErrInsufficientCapacity) {
		t.Fatalf("start beyond resumed capacity: %v", err)
	}
	mustStart(t, h2, spec("d", 1024, 1))
	mustOp(t, h2, "b", api.OpResume)

	// Another node may not adopt this file.
	if _, err := New(Options{Node: "other", StateFile: file}); err == nil || !strings.Contains(err.Error(), "belongs to node") {
		t.Fatalf("foreign node on state file: %v", err)
	}
}

func TestInject(t *testing.T) {
	file := filepath.Join(t.TempDir(), "n1.json")
	h := newHV(t, Options{CPUs: 4, MemMB: 4096, StateFile: file})
	mustStart(t, h, spec("a", 1024, 1))
	mustStart(t, h, spec("b", 1024, 1))
	mustStart(t, h, spec("s", 1024, 1))
	mustOp(t, h, "s", api.OpShutdown)

	if err := Inject(file, "crash", "a"); err != nil {
		t.Fatal(err)
	}
	if err := Inject(file, "vanish", "b"); err != nil {
		t.Fatal(err)
	}
	if err := Inject(file, "appear", "c"); err != nil {
		t.Fatal(err)
	}
	noEvent(t, h) // nothing noticed until the next call
	got := list(t, h)
	if got["a"].State != api.StateCrashed {
		t.Errorf("a is %q, want crashed", got["a"].State)
	}
	if _, ok := got["b"]; ok {
		t.Error("vanished b still listed")
	}
	if got["c"].State != api.StateRunning || got["c"].MemMB != 1024 || got["c"].VCPUs != 1 {
		t.Errorf("appeared c listed as %+v", got["c"])
	}
	evs := map[string]nodemgr.GuestEvent{}
	for range 3 {
		ev := nextEvent(t, h)
		evs[ev.Name] = ev
	}
	wantEvs := map[string]nodemgr.GuestEvent{
		"a": {Name: "a", State: api.StateCrashed, Reason: "crashed"},
		"b": {Name: "b", Gone: true, Reason: "vanished"},
		"c": {Name: "c", State: api.StateRunning, Reason: "appeared"},
	}
	for n, w := range wantEvs {
		if evs[n] != w {
			t.Errorf("event for %s = %+v, want %+v", n, evs[n], w)
		}
	}
	noEvent(t, h)

	// Capacity follows: c holds 1024 MiB/1 vCPU, a and b released theirs.
	mustStart(t, h, spec("d", 3072, 3))
	if err := AppearIn(file, spec("e", 1, 1)); !errors.Is(err, ErrInsufficientCapacity) {
		t.Fatalf("appear on a full node: %v", err)
	}

	for _, c := range []struct{ action, name, want string }{
		{"crash", "s", "cannot crash: guest is shutoff"},
		{"crash", "zz", "no such guest"},
		{"vanish", "zz", "no such guest"},
		{"appear", "c", "already exists"},
		{"explode", "c", "unknown injection"},
	} {
		if err := Inject(file, c.action, c.name); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Inject(%s %s) = %v, want %q", c.action, c.name, err, c.want)
		}
	}
	noEvent(t, h)
	// Ops see injected state too.
	if err := Inject(file, "vanish", "d"); err != nil {
		t.Fatal(err)
	}
	if err := h.Op(context.Background(), "d", api.OpPause, nodemgr.OpOptions{}); !errors.Is(err, ErrNoSuchGuest) {
		t.Fatalf("op on injected-away guest: %v", err)
	}
	expectEvent(t, h, nodemgr.GuestEvent{Name: "d", Gone: true, Reason: "vanished"})
}

// TestInjectHelperProcess is the "other process" of TestInjectOtherProcess.
func TestInjectHelperProcess(t *testing.T) {
	file := os.Getenv("USHER_SIM_INJECT_FILE")
	if file == "" {
		t.Skip("helper process only")
	}
	for _, arg := range strings.Split(os.Getenv("USHER_SIM_INJECT"), ",") {
		action, name, _ := strings.Cut(arg, ":")
		if err := Inject(file, action, name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

func TestInjectOtherProcess(t *testing.T) {
	file := filepath.Join(t.TempDir(), "n1.json")
	h := newHV(t, Options{CPUs: 128, StateFile: file})
	ctx := context.Background()
	// The helper appears 30 guests while this process starts 30 of its
	// own; the file lock must keep every update.
	var injects []string
	for i := range 30 {
		injects = append(injects, fmt.Sprintf("appear:ext%d", i))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInjectHelperProcess$")
	cmd.Env = append(os.Environ(), "USHER_SIM_INJECT_FILE="+file, "USHER_SIM_INJECT="+strings.Join(injects, ","))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := h.Start(ctx, spec(fmt.Sprintf("own%d", i), 256, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	got := list(t, h)
	if len(got) != 60 {
		t.Fatalf("listed %d guests, want 60", len(got))
	}
	appeared := 0
	for range 60 {
		ev := nextEvent(t, h)
		if strings.HasPrefix(ev.Name, "ext") && ev.State == api.StateRunning && ev.Reason == "appeared" {
			appeared++
		}
	}
	if appeared != 30 {
		t.Fatalf("%d appear events, want 30", appeared)
	}
	// And a crash injected from the other process.
	cmd = exec.Command(os.Args[0], "-test.run=^TestInjectHelperProcess$")
	cmd.Env = append(os.Environ(), "USHER_SIM_INJECT_FILE="+file, "USHER_SIM_INJECT=crash:own3,vanish:ext7")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if s := stateOf(t, h, "own3"); s != api.StateCrashed {
		t.Fatalf("own3 is %q", s)
	}
	evs := []nodemgr.GuestEvent{nextEvent(t, h), nextEvent(t, h)}
	sort.Slice(evs, func(i, j int) bool { return evs[i].Name < evs[j].Name })
	if evs[0] != (nodemgr.GuestEvent{Name: "ext7", Gone: true, Reason: "vanished"}) ||
		evs[1] != (nodemgr.GuestEvent{Name: "own3", State: api.StateCrashed, Reason: "crashed"}) {
		t.Fatalf("events %+v", evs)
	}
}

func TestConcurrentStarts(t *testing.T) {
	for _, file := range []bool{false, true} {
		t.Run(fmt.Sprintf("statefile=%v", file), func(t *testing.T) {
			opts := Options{CPUs: 64, MemMB: 64 * 1024, EventBuffer: 1000}
			if file {
				opts.StateFile = filepath.Join(t.TempDir(), "n1.json")
			}
			h := newHV(t, opts)
			ctx := context.Background()
			var wg sync.WaitGroup
			var mu sync.Mutex
			ok, refused := 0, 0
			for i := range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := h.Start(ctx, spec(fmt.Sprintf("vm%d", i%150), 1024, 1))
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						ok++
					case errors.Is(err, ErrInsufficientCapacity), errors.Is(err, ErrExists):
						refused++
					default:
						t.Error(err)
					}
				}()
				wg.Add(1)
				go func() { // readers and ops racing with the starts
					defer wg.Done()
					h.List(ctx)
					h.Stats(ctx)
					h.Op(ctx, fmt.Sprintf("vm%d", i), api.OpReboot, nodemgr.OpOptions{})
				}()
			}
			wg.Wait()
			if ok != 64 || refused != 136 {
				t.Fatalf("%d started, %d refused; want 64 and 136", ok, refused)
			}
			if n := len(list(t, h)); n != 64 {
				t.Fatalf("%d guests listed, want 64", n)
			}
		})
	}
}

func TestCloseWhileEmitting(t *testing.T) {
	h := newHV(t, Options{CPUs: 1 << 20, MemMB: 1 << 30, EventBuffer: 8})
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				if err := h.Start(ctx, spec(name, 1, 1)); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Error(err)
					}
					return
				}
				h.Op(ctx, name, api.OpDestroy, nodemgr.OpOptions{})
			}
		}()
	}
	// A reader consumes some events, then Close lands mid-stream.
	for range 100 {
		nextEvent(t, h)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The channel is closed: draining ends.
	timeout := time.After(waitFor)
	for {
		select {
		case _, ok := <-h.Events():
			if !ok {
				if err := h.Close(); err != nil {
					t.Fatal("second Close:", err)
				}
				return
			}
		case <-timeout:
			t.Fatal("events channel not closed")
		}
	}
}

func TestEventsNeverBlock(t *testing.T) {
	h := newHV(t, Options{EventBuffer: 2})
	for i := range 5 {
		if err := h.Start(context.Background(), spec(fmt.Sprint(i), 1, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if d := h.Dropped(); d != 3 {
		t.Fatalf("dropped %d, want 3", d)
	}
	if len(h.Events()) != 2 {
		t.Fatalf("%d queued", len(h.Events()))
	}
	none := newHV(t, Options{Node: "quiet", EventBuffer: -1})
	if none.Events() != nil {
		t.Fatal("EventBuffer<0 should disable events")
	}
	if err := none.Start(context.Background(), spec("x", 1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := none.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	mk := func() *Hypervisor {
		h := newHV(t, Options{Seed: 42, EventBuffer: -1})
		for _, s := range []nodemgr.Spec{spec("r", 1024, 4), spec("p", 2048, 2), spec("o", 512, 1), spec("pin", 256, 2)} {
			if err := h.Start(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		h.Op(ctx, "p", api.OpPause, nodemgr.OpOptions{})
		h.Op(ctx, "o", api.OpShutdown, nodemgr.OpOptions{})
		h.SetLoad("pin", 1.5)
		return h
	}
	h1, h2 := mk(), mk()
	for range 50 {
		s1, err := h1.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s2, _ := h2.Stats(ctx)
		if fmt.Sprint(s1) != fmt.Sprint(s2) {
			t.Fatalf("same seed, different stats:\n%v\n%v", s1, s2)
		}
		r := s1.Guests["r"]
		if r.CPU < 0 || r.CPU > 4 || r.MemBytes != 1024<<20 || r.NetRx <= 0 || r.DiskWrite <= 0 {
			t.Fatalf("running guest sample %+v", r)
		}
		if p := s1.Guests["p"]; p.CPU != 0 || p.MemBytes != 2048<<20 || p.NetRx != 0 {
			t.Fatalf("paused guest sample %+v", p)
		}
		if o := s1.Guests["o"]; o != (nodemgr.Sample{}) {
			t.Fatalf("shutoff guest sample %+v", o)
		}
		if s1.Guests["pin"].CPU != 1.5 {
			t.Fatalf("pinned load %v", s1.Guests["pin"].CPU)
		}
		var sum nodemgr.Sample
		for _, s := range s1.Guests {
			sum.CPU += s.CPU
			sum.MemBytes += s.MemBytes
			sum.NetTx += s.NetTx
		}
		if math.Abs(sum.CPU-s1.Node.CPU) > 1e-9 || sum.MemBytes != s1.Node.MemBytes || math.Abs(sum.NetTx-s1.Node.NetTx) > 1e-6 {
			t.Fatalf("node %+v is not the sum %+v", s1.Node, sum)
		}
	}
	h1.SetLoad("pin", -1)
	if s, _ := h1.Stats(ctx); s.Guests["pin"].CPU == 1.5 {
		t.Fatal("unpinned load stayed at the pin")
	}
	info, err := h1.NodeInfo(ctx)
	if err != nil || info.Name != "n1" || info.Driver != "sim" || info.CPUs != DefaultCPUs || info.MemMB != DefaultMemMB {
		t.Fatalf("NodeInfo = %+v, %v", info, err)
	}
}

// BenchmarkStartList10k starts 10,000 guests on an in-memory node and lists
// them once, per iteration.
func BenchmarkStartList10k(b *testing.B) {
	ctx := context.Background()
	names := make([]string, 10000)
	for i := range names {
		names[i] = fmt.Sprintf("vm%05d.user.example", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		h, err := New(Options{Node: "n", CPUs: 1 << 20, MemMB: 1 << 30, EventBuffer: -1})
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range names {
			if err := h.Start(ctx, nodemgr.Spec{Name: n, MemMB: 1024, VCPUs: 1}); err != nil {
				b.Fatal(err)
			}
		}
		ds, err := h.List(ctx)
		if err != nil || len(ds) != len(names) {
			b.Fatal(len(ds), err)
		}
		h.Close()
	}
}

// BenchmarkList10k lists a node holding 10,000 guests.
func BenchmarkList10k(b *testing.B) {
	ctx := context.Background()
	h, _ := New(Options{Node: "n", CPUs: 1 << 20, MemMB: 1 << 30, EventBuffer: -1})
	for i := range 10000 {
		h.Start(ctx, nodemgr.Spec{Name: fmt.Sprint(i), MemMB: 1, VCPUs: 1})
	}
	b.ReportAllocs()
	for b.Loop() {
		h.List(ctx)
	}
}

// TestGuaranteedCapacity: on a node offering 8 vCPUs on 2 host CPUs,
// guaranteed guests (data qos=guaranteed) take at most 2 vCPUs in all,
// best-effort ones the rest; a guaranteed guest that stops gives its
// share back; NodeInfo says how many can be guaranteed.
func TestGuaranteedCapacity(t *testing.T) {
	h := newHV(t, Options{CPUs: 8, HostCPUs: 2, MemMB: 8192})
	ctx := context.Background()
	g := func(name string, vcpus int) nodemgr.Spec {
		s := spec(name, 256, vcpus)
		s.Data = map[string]string{api.DataQoS: api.QoSGuaranteed}
		return s
	}
	if ni, err := h.NodeInfo(ctx); err != nil || ni.CPUs != 8 || ni.GuaranteedCPUs != 2 {
		t.Fatalf("node info: %+v %v", ni, err)
	}
	mustStart(t, h, g("g1", 2))
	err := h.Start(ctx, g("g2", 1))
	if !errors.Is(err, ErrInsufficientCapacity) || !strings.Contains(err.Error(), "guaranteed vCPUs: 0 left to guarantee, 1 needed") {
		t.Fatalf("a third guaranteed vCPU: %v", err)
	}
	mustStart(t, h, spec("b1", 256, 6)) // best-effort: the overcommitted rest
	mustOp(t, h, "g1", api.OpShutdown)
	mustStart(t, h, g("g2", 2))
}
