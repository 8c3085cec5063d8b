package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/nodemgr"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultCPUs        = 16
	DefaultMemMB       = 65536
	DefaultEventBuffer = 1024
)

// Sentinel errors; the errors returned by Hypervisor match them with
// errors.Is and carry a more specific message.
var (
	ErrNoSuchGuest          = nodemgr.ErrNoGuest
	ErrExists               = errors.New("guest already exists")
	ErrInsufficientCapacity = errors.New("insufficient capacity")
	ErrInvalidTransition    = errors.New("invalid state transition")
	ErrClosed               = errors.New("sim: hypervisor closed")
)

// Options configure a simulated hypervisor.
type Options struct {
	Node    string // node name (NodeInfo.Name); required
	Address string // advertised address (NodeInfo.Address)
	CPUs    int    // capacity in vCPUs (default 16)
	// HostCPUs is how many of CPUs can be guaranteed (the host's CPUs
	// when CPUs overcommits them; default CPUs): guaranteed guests (data
	// qos=guaranteed) never take more.
	HostCPUs  int
	MemMB     int           // capacity in MiB (default 65536)
	BootDelay time.Duration // time from Start to running (default 0); ops and Migrate take BootDelay/4
	// StateFile is "" to keep guests in memory only; otherwise guests
	// persist in this JSON file so they outlive the LNM process, and other
	// processes can inject faults through it (Inject).
	StateFile string
	Seed      int64 // synthetic load RNG seed
	// EventBuffer is the events channel size (default 1024). A negative
	// value disables events: Events returns nil and the LNM relies on
	// scans. At 10,000 nodes per process the default buffers cost ~0.5 GiB,
	// so scale tests should pick a small buffer or none.
	EventBuffer int
}

// guest is one simulated VM.
type guest struct {
	name     string
	state    api.VMState
	reason   string
	mem      int
	vcpus    int
	data     map[string]string
	incoming bool    // created by PrepareIncoming and not yet operated on
	base     float64 // synthetic CPU load the random walk reverts to (cores)
	load     float64 // current synthetic CPU load (cores)
	rs       uint64  // the guest's own RNG state, so samples do not depend on map order
}

// rand returns a pseudo-random float in [0,1) (splitmix64).
func (d *guest) rand() float64 {
	d.rs += 0x9e3779b97f4a7c15
	z := d.rs
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return float64(z>>11) / float64(1<<53)
}

// consumes reports whether a guest in state s holds memory and vCPUs.
func consumes(s api.VMState) bool { return s == api.StateRunning || s == api.StatePaused }

// Hypervisor is a simulated VMM implementing nodemgr.Driver. All methods are
// safe for concurrent use.
type Hypervisor struct {
	opts Options

	mu       sync.Mutex // guards everything below; held while sending events
	closed   bool
	guests   map[string]*guest
	reserved map[string]nodemgr.Spec // Starts sleeping through BootDelay
	usedMem  int                     // running+paused guests and reservations
	usedCPU  int
	pins     map[string]float64      // SetLoad pins by guest name
	events   chan nodemgr.GuestEvent // nil when disabled
	file     *stateFile              // nil in memory mode

	dropped atomic.Uint64
}

var _ nodemgr.Driver = (*Hypervisor)(nil)

// New creates a simulated hypervisor. With a StateFile that already exists,
// the guests recorded there are resumed as they were.
func New(opts Options) (*Hypervisor, error) {
	if opts.Node == "" {
		return nil, errors.New("sim: Options.Node is required")
	}
	if opts.CPUs < 0 || opts.MemMB < 0 || opts.BootDelay < 0 || opts.HostCPUs < 0 {
		return nil, errors.New("sim: negative CPUs, HostCPUs, MemMB or BootDelay")
	}
	if opts.CPUs == 0 {
		opts.CPUs = DefaultCPUs
	}
	if opts.HostCPUs == 0 || opts.HostCPUs > opts.CPUs {
		opts.HostCPUs = opts.CPUs
	}
	if opts.MemMB == 0 {
		opts.MemMB = DefaultMemMB
	}
	if opts.EventBuffer == 0 {
		opts.EventBuffer = DefaultEventBuffer
	}
	h := &Hypervisor{
		opts:     opts,
		guests:   make(map[string]*guest),
		reserved: make(map[string]nodemgr.Spec),
		pins:     make(map[string]float64),
	}
	if opts.EventBuffer > 0 {
		h.events = make(chan nodemgr.GuestEvent, opts.EventBuffer)
	}
	if opts.StateFile != "" {
		f, err := openStateFile(opts.StateFile)
		if err != nil {
			return nil, err
		}
		if err := h.loadInitial(f); err != nil {
			f.close()
			return nil, err
		}
		h.file = f
	}
	return h, nil
}

// loadInitial adopts the guests of an existing state file (or creates the
// file) and records this node's name and capacity in it.
func (h *Hypervisor) loadInitial(f *stateFile) error {
	unlock, err := f.lock(true)
	if err != nil {
		return err
	}
	defer unlock()
	st, _, err := f.read()
	if err != nil {
		return err
	}
	if st.Node != "" && st.Node != h.opts.Node {
		return fmt.Errorf("sim: state file %s belongs to node %q, not %q", f.path, st.Node, h.opts.Node)
	}
	for _, fd := range st.Guests {
		d := h.newGuest(fd.Name, fd.MemMB, fd.VCPUs, fd.Data)
		d.state, d.reason, d.incoming = fd.State, fd.Reason, fd.Incoming
		h.guests[d.name] = d
		if consumes(d.state) {
			h.usedMem += d.mem
			h.usedCPU += d.vcpus
		}
	}
	return h.persistLocked(f)
}

func (h *Hypervisor) newGuest(name string, mem, vcpus int, data map[string]string) *guest {
	hs := fnv.New64a()
	hs.Write([]byte(name))
	x := hs.Sum64() ^ uint64(h.opts.Seed)*0x9e3779b97f4a7c15
	frac := float64(x>>11) / float64(1<<53) // [0,1)
	base := (0.05 + 0.6*frac) * float64(vcpus)
	return &guest{name: name, mem: mem, vcpus: vcpus, data: copyMap(data), base: base, load: base, rs: x}
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// begin takes the hypervisor lock (and, with a state file, the file lock,
// exclusive when write is set) after re-reading the file if another
// process changed it. The returned func releases both.
func (h *Hypervisor) begin(ctx context.Context, write bool) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	if h.file == nil {
		return h.mu.Unlock, nil
	}
	funlock, err := h.file.lock(write)
	if err != nil {
		h.mu.Unlock()
		return nil, err
	}
	if err := h.syncLocked(true); err != nil {
		funlock()
		h.mu.Unlock()
		return nil, err
	}
	return func() { funlock(); h.mu.Unlock() }, nil
}

// syncLocked re-reads the state file if it changed since this hypervisor
// last read or wrote it, and reconciles memory with it, emitting an event
// for every difference when emit is set. Caller holds h.mu and the file lock.
func (h *Hypervisor) syncLocked(emit bool) error {
	id, err := h.file.stat()
	if err != nil {
		return err
	}
	if id == h.file.last {
		return nil
	}
	st, id, err := h.file.read()
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(st.Guests))
	for _, fd := range st.Guests {
		seen[fd.Name] = true
		d, ok := h.guests[fd.Name]
		if !ok {
			d = h.newGuest(fd.Name, fd.MemMB, fd.VCPUs, fd.Data)
			h.guests[d.name] = d
		} else if d.state == fd.State && d.reason == fd.Reason {
			d.mem, d.vcpus, d.data, d.incoming = fd.MemMB, fd.VCPUs, copyMap(fd.Data), fd.Incoming
			continue
		}
		d.state, d.reason, d.mem, d.vcpus, d.data, d.incoming = fd.State, fd.Reason, fd.MemMB, fd.VCPUs, copyMap(fd.Data), fd.Incoming
		if emit {
			h.emitLocked(nodemgr.GuestEvent{Name: d.name, State: d.state, Reason: d.reason})
		}
	}
	for name := range h.guests {
		if !seen[name] {
			delete(h.guests, name)
			if emit {
				h.emitLocked(nodemgr.GuestEvent{Name: name, Gone: true, Reason: "vanished"})
			}
		}
	}
	h.recountLocked()
	h.file.last = id
	return nil
}

// recountLocked recomputes the capacity in use from scratch.
func (h *Hypervisor) recountLocked() {
	h.usedMem, h.usedCPU = 0, 0
	for _, d := range h.guests {
		if consumes(d.state) {
			h.usedMem += d.mem
			h.usedCPU += d.vcpus
		}
	}
	for _, s := range h.reserved {
		h.usedMem += s.MemMB
		h.usedCPU += s.VCPUs
	}
}

// persistLocked writes every guest to the state file. Caller holds h.mu
// and the exclusive file lock.
func (h *Hypervisor) persistLocked(f *stateFile) error {
	st := fileState{Version: 1, Node: h.opts.Node, CPUs: h.opts.CPUs, MemMB: h.opts.MemMB}
	st.Guests = make([]fileGuest, 0, len(h.guests))
	for _, d := range h.guests {
		st.Guests = append(st.Guests, fileGuest{Name: d.name, State: d.state, Reason: d.reason,
			MemMB: d.mem, VCPUs: d.vcpus, Data: d.data, Incoming: d.incoming})
	}
	id, err := f.write(&st)
	if err != nil {
		return err
	}
	f.last = id
	return nil
}

// commitLocked persists a mutation already applied in memory and then
// emits its events. If the file cannot be written, memory is reloaded from
// the file (silently: nothing was announced) and the error returned.
func (h *Hypervisor) commitLocked(evs ...nodemgr.GuestEvent) error {
	if h.file != nil {
		if err := h.persistLocked(h.file); err != nil {
			h.file.last = fileID{}
			if rerr := h.syncLocked(false); rerr != nil {
				h.file.last = fileID{} // retry the reload next time
			}
			return fmt.Errorf("sim: saving state: %w", err)
		}
	}
	for _, ev := range evs {
		h.emitLocked(ev)
	}
	return nil
}

// emitLocked sends an event without blocking; a full channel drops it.
// Holding h.mu serialises senders with Close, so a send never hits a
// closed channel.
func (h *Hypervisor) emitLocked(ev nodemgr.GuestEvent) {
	if h.events == nil || h.closed {
		return
	}
	select {
	case h.events <- ev:
	default:
		h.dropped.Add(1)
	}
}

// CapacityError says which resource is short when a guest cannot run.
type CapacityError struct {
	Node                 string
	FreeMemMB, NeedMemMB int
	FreeVCPUs, NeedVCPUs int
	ShortMem, ShortVCPUs bool
	Guaranteed           bool // the vCPUs short are those the node can guarantee
}

func (e *CapacityError) Error() string {
	msg := fmt.Sprintf("insufficient capacity on node %s:", e.Node)
	if e.ShortMem {
		msg += fmt.Sprintf(" memory: %d MiB free, %d MiB needed;", e.FreeMemMB, e.NeedMemMB)
	}
	if e.ShortVCPUs && e.Guaranteed {
		msg += fmt.Sprintf(" guaranteed vCPUs: %d left to guarantee, %d needed;", e.FreeVCPUs, e.NeedVCPUs)
	} else if e.ShortVCPUs {
		msg += fmt.Sprintf(" vCPUs: %d free, %d needed;", e.FreeVCPUs, e.NeedVCPUs)
	}
	return msg[:len(msg)-1]
}

// Is makes errors.Is(err, ErrInsufficientCapacity) true.
func (e *CapacityError) Is(target error) bool { return target == ErrInsufficientCapacity }

// TransitionError is an operation that the guest's state does not allow.
type TransitionError struct {
	Name  string
	Op    string
	State api.VMState
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("cannot %s: guest is %s (guest %q)", e.Op, e.State, e.Name)
}

// Is makes errors.Is(err, ErrInvalidTransition) true.
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// checkCapacityLocked fails if spec's memory and vCPUs more would exceed
// capacity: for a guaranteed guest, the vCPUs HostCPUs can still
// guarantee.
func (h *Hypervisor) checkCapacityLocked(spec nodemgr.Spec) error {
	mem, vcpus := spec.MemMB, spec.VCPUs
	freeMem, freeCPU := h.opts.MemMB-h.usedMem, h.opts.CPUs-h.usedCPU
	g := api.Guaranteed(spec.Data)
	if g {
		taken := 0
		for _, d := range h.guests {
			if consumes(d.state) && d.data[api.DataQoS] == api.QoSGuaranteed {
				taken += d.vcpus
			}
		}
		for _, s := range h.reserved {
			if api.Guaranteed(s.Data) {
				taken += s.VCPUs
			}
		}
		freeCPU = min(freeCPU, h.opts.HostCPUs-taken)
	}
	e := &CapacityError{Node: h.opts.Node, FreeMemMB: freeMem, NeedMemMB: mem, FreeVCPUs: freeCPU, NeedVCPUs: vcpus,
		ShortMem: mem > freeMem, ShortVCPUs: vcpus > freeCPU, Guaranteed: g}
	if e.ShortMem || e.ShortVCPUs {
		return e
	}
	return nil
}

func noSuch(name string) error { return fmt.Errorf("%w: %q", ErrNoSuchGuest, name) }

func (h *Hypervisor) existsLocked(name string) error {
	if _, ok := h.guests[name]; ok {
		return fmt.Errorf("%w: %q", ErrExists, name)
	}
	if _, ok := h.reserved[name]; ok {
		return fmt.Errorf("%w: %q (being started)", ErrExists, name)
	}
	return nil
}

// setStateLocked moves d to state s, keeping the capacity counters right.
// The caller has checked capacity if s consumes and d's state did not.
func (h *Hypervisor) setStateLocked(d *guest, s api.VMState, reason string) nodemgr.GuestEvent {
	was, now := consumes(d.state), consumes(s)
	if was && !now {
		h.usedMem -= d.mem
		h.usedCPU -= d.vcpus
	} else if now && !was {
		h.usedMem += d.mem
		h.usedCPU += d.vcpus
	}
	d.state, d.reason = s, reason
	return nodemgr.GuestEvent{Name: d.name, State: s, Reason: reason}
}

// addLocked creates a running guest (capacity already checked).
func (h *Hypervisor) addLocked(spec nodemgr.Spec, reason string, incoming bool) nodemgr.GuestEvent {
	d := h.newGuest(spec.Name, spec.MemMB, spec.VCPUs, spec.Data)
	d.incoming = incoming
	h.guests[d.name] = d
	return h.setStateLocked(d, api.StateRunning, reason)
}

// removeLocked deletes a guest, releasing its capacity.
func (h *Hypervisor) removeLocked(d *guest, reason string) nodemgr.GuestEvent {
	if consumes(d.state) {
		h.usedMem -= d.mem
		h.usedCPU -= d.vcpus
	}
	delete(h.guests, d.name)
	return nodemgr.GuestEvent{Name: d.name, Gone: true, Reason: reason}
}

func validSpec(spec nodemgr.Spec) error {
	if spec.Name == "" {
		return errors.New("sim: spec has no name")
	}
	if spec.MemMB <= 0 || spec.VCPUs <= 0 {
		return fmt.Errorf("sim: guest %q needs positive memory and vCPUs (got %d MiB, %d vCPUs)", spec.Name, spec.MemMB, spec.VCPUs)
	}
	return nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Kind returns "sim".
func (h *Hypervisor) Kind() string { return "sim" }

// Capabilities implements nodemgr.Driver: the simulated hypervisor pushes
// events, makes the target of a migration prepare for it, and (with a
// state file) keeps its guests across LNM restarts.
func (h *Hypervisor) Capabilities() nodemgr.Capabilities {
	return nodemgr.Capabilities{Events: true, PrepareIncoming: true, LiveMigration: true, Persistent: h.opts.StateFile != ""}
}

// NodeInfo describes the simulated node.
func (h *Hypervisor) NodeInfo(ctx context.Context) (api.NodeInfo, error) {
	if err := ctx.Err(); err != nil {
		return api.NodeInfo{}, err
	}
	return api.NodeInfo{Name: h.opts.Node, Address: h.opts.Address, Driver: "sim",
		CPUs: h.opts.CPUs, MemMB: h.opts.MemMB, Hostname: h.opts.Node, Model: "usher simulated node", GuaranteedCPUs: h.opts.HostCPUs}, nil
}

// List returns every guest, in no particular order. Guests still inside
// their BootDelay are not listed yet.
func (h *Hypervisor) List(ctx context.Context) ([]nodemgr.GuestInfo, error) {
	unlock, err := h.begin(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := make([]nodemgr.GuestInfo, 0, len(h.guests))
	for _, d := range h.guests {
		out = append(out, nodemgr.GuestInfo{Name: d.name, State: d.state, Reason: d.reason, MemMB: d.mem, VCPUs: d.vcpus})
	}
	return out, nil
}

// Start creates a guest and returns once it runs, after BootDelay. The
// name and capacity are reserved while booting; if ctx ends first the
// reservation is dropped, ctx.Err() returned and the guest never exists.
func (h *Hypervisor) Start(ctx context.Context, spec nodemgr.Spec) error {
	if err := validSpec(spec); err != nil {
		return err
	}
	delay := h.opts.BootDelay
	unlock, err := h.begin(ctx, delay <= 0)
	if err != nil {
		return err
	}
	if err := h.existsLocked(spec.Name); err != nil {
		unlock()
		return err
	}
	if err := h.checkCapacityLocked(spec); err != nil {
		unlock()
		return err
	}
	if delay <= 0 {
		defer unlock()
		return h.commitLocked(h.addLocked(spec, "booted", false))
	}
	h.reserved[spec.Name] = spec
	h.usedMem += spec.MemMB
	h.usedCPU += spec.VCPUs
	unlock()

	if err := sleep(ctx, delay); err != nil {
		h.mu.Lock()
		h.unreserveLocked(spec)
		h.mu.Unlock()
		return err
	}
	// Re-check: another process may have changed the state file meanwhile.
	unlock, err = h.begin(context.WithoutCancel(ctx), true)
	if err != nil {
		h.mu.Lock()
		h.unreserveLocked(spec)
		h.mu.Unlock()
		return err
	}
	defer unlock()
	h.unreserveLocked(spec)
	if _, ok := h.guests[spec.Name]; ok {
		return fmt.Errorf("%w: %q", ErrExists, spec.Name)
	}
	if err := h.checkCapacityLocked(spec); err != nil {
		return err
	}
	return h.commitLocked(h.addLocked(spec, "booted", false))
}

func (h *Hypervisor) unreserveLocked(spec nodemgr.Spec) {
	if _, ok := h.reserved[spec.Name]; ok {
		delete(h.reserved, spec.Name)
		h.usedMem -= spec.MemMB
		h.usedCPU -= spec.VCPUs
	}
}

// transition computes the result of op on a guest in state s: the new
// state and reason, gone for destroy, and whether capacity must be
// acquired. It does not change anything.
func transition(name string, s api.VMState, op api.Op) (to api.VMState, reason string, gone, acquire bool, err error) {
	bad := func() (api.VMState, string, bool, bool, error) {
		return "", "", false, false, &TransitionError{Name: name, Op: string(op), State: s}
	}
	switch op {
	case api.OpPause:
		if s != api.StateRunning {
			return bad()
		}
		return api.StatePaused, "paused", false, false, nil
	case api.OpResume:
		if s != api.StatePaused {
			return bad()
		}
		return api.StateRunning, "resumed", false, false, nil
	case api.OpShutdown:
		if !consumes(s) {
			return bad()
		}
		return api.StateShutoff, "shutdown", false, false, nil
	case api.OpReboot:
		if !consumes(s) {
			return bad()
		}
		return api.StateRunning, "rebooted", false, false, nil
	case api.OpHibernate:
		if !consumes(s) {
			return bad()
		}
		return api.StateHibernated, "hibernated", false, false, nil
	case api.OpRestore:
		if s != api.StateHibernated {
			return bad()
		}
		return api.StateRunning, "restored", false, true, nil
	case api.OpDestroy:
		return "", "destroyed", true, false, nil
	case api.OpCycle:
		return api.StateRunning, "cycled", false, !consumes(s), nil
	}
	_, err = api.ParseOp(string(op))
	return "", "", false, false, fmt.Errorf("sim: %w", err)
}

// Op applies a Table 3 operation, taking BootDelay/4. Invalid transitions
// fail at once; the transition is checked again after the delay in case
// the guest changed meanwhile. Options are ignored.
func (h *Hypervisor) Op(ctx context.Context, name string, op api.Op, _ nodemgr.OpOptions) error {
	if delay := h.opts.BootDelay / 4; delay > 0 {
		unlock, err := h.begin(ctx, false)
		if err != nil {
			return err
		}
		d, ok := h.guests[name]
		if !ok {
			unlock()
			return noSuch(name)
		}
		_, _, _, _, err = transition(name, d.state, op)
		unlock()
		if err != nil {
			return err
		}
		if err := sleep(ctx, delay); err != nil {
			return err
		}
		ctx = context.WithoutCancel(ctx) // the op is done; record it
	}
	unlock, err := h.begin(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	d, ok := h.guests[name]
	if !ok {
		return noSuch(name)
	}
	to, reason, gone, acquire, err := transition(name, d.state, op)
	if err != nil {
		return err
	}
	if gone {
		return h.commitLocked(h.removeLocked(d, reason))
	}
	if acquire {
		if err := h.checkCapacityLocked(nodemgr.Spec{Name: d.name, MemMB: d.mem, VCPUs: d.vcpus, Data: d.data}); err != nil {
			return err
		}
	}
	if op == api.OpCycle {
		d.load = d.base // a fresh boot
	}
	d.incoming = false
	return h.commitLocked(h.setStateLocked(d, to, reason))
}

// PrepareIncoming creates the destination copy of a migrating guest,
// running, if capacity allows.
func (h *Hypervisor) PrepareIncoming(ctx context.Context, spec nodemgr.Spec) error {
	if err := validSpec(spec); err != nil {
		return err
	}
	unlock, err := h.begin(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	if err := h.existsLocked(spec.Name); err != nil {
		return err
	}
	if err := h.checkCapacityLocked(spec); err != nil {
		return err
	}
	return h.commitLocked(h.addLocked(spec, "incoming migration", true))
}

// AbortIncoming removes a guest created by PrepareIncoming that has not
// been operated on since. It is a no-op for a guest that does not exist
// (abort is cleanup), and an error for one that was not prepared.
func (h *Hypervisor) AbortIncoming(ctx context.Context, name string) error {
	unlock, err := h.begin(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	d, ok := h.guests[name]
	if !ok {
		return nil
	}
	if !d.incoming {
		return fmt.Errorf("sim: guest %q is not an incoming migration", name)
	}
	return h.commitLocked(h.removeLocked(d, "incoming migration aborted"))
}

// Migrate hands a running or paused guest over to target: after
// BootDelay/4 the local copy is removed (the controller has already made
// the destination copy with PrepareIncoming). If ctx ends first, the
// guest keeps running here.
func (h *Hypervisor) Migrate(ctx context.Context, name, target, address string) error {
	check := func() (*guest, error) {
		d, ok := h.guests[name]
		if !ok {
			return nil, noSuch(name)
		}
		if !consumes(d.state) {
			return nil, &TransitionError{Name: name, Op: "migrate", State: d.state}
		}
		return d, nil
	}
	if delay := h.opts.BootDelay / 4; delay > 0 {
		unlock, err := h.begin(ctx, false)
		if err != nil {
			return err
		}
		_, err = check()
		unlock()
		if err != nil {
			return err
		}
		if err := sleep(ctx, delay); err != nil {
			return err
		}
		ctx = context.WithoutCancel(ctx)
	}
	unlock, err := h.begin(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	d, err := check()
	if err != nil {
		return err
	}
	return h.commitLocked(h.removeLocked(d, "migrated to "+target))
}

// Stats samples synthetic usage: each active guest's CPU load does a
// seeded random walk around a per-guest base (or sits at its SetLoad pin);
// memory is its allocation; network and disk rates follow the CPU load.
// Inactive guests read zero. The node sample is the sum.
func (h *Hypervisor) Stats(ctx context.Context) (nodemgr.Stats, error) {
	unlock, err := h.begin(ctx, false)
	if err != nil {
		return nodemgr.Stats{}, err
	}
	defer unlock()
	st := nodemgr.Stats{Guests: make(map[string]nodemgr.Sample, len(h.guests))}
	for _, d := range h.guests {
		var s nodemgr.Sample
		if consumes(d.state) {
			s.MemBytes = float64(d.mem) * (1 << 20)
		}
		if d.state == api.StateRunning {
			if pin, ok := h.pins[d.name]; ok {
				d.load = pin
			} else {
				v := float64(d.vcpus)
				d.load += (d.base-d.load)*0.2 + (d.rand()-0.5)*0.1*v
				d.load = min(max(d.load, 0), v)
			}
			s.CPU = d.load
			s.NetRx = 2e3 + 4e4*d.load
			s.NetTx = 1e3 + 2e4*d.load
			s.DiskRead = 4e3 + 3e4*d.load
			s.DiskWrite = 2e3 + 1e4*d.load
		}
		st.Guests[d.name] = s
		st.Node.CPU += s.CPU
		st.Node.MemBytes += s.MemBytes
		st.Node.NetRx += s.NetRx
		st.Node.NetTx += s.NetTx
		st.Node.DiskRead += s.DiskRead
		st.Node.DiskWrite += s.DiskWrite
	}
	return st, nil
}

// Events returns the lifecycle event channel (nil if EventBuffer < 0). It
// is closed by Close. Events that find it full are dropped (see Dropped);
// the LNM's periodic scans recover from that.
func (h *Hypervisor) Events() <-chan nodemgr.GuestEvent {
	if h.events == nil {
		return nil
	}
	return h.events
}

// Dropped counts the events dropped because the channel was full.
func (h *Hypervisor) Dropped() uint64 { return h.dropped.Load() }

// Close closes the events channel and the state file lock. Guests keep
// existing (in the state file, when there is one). Later calls fail with
// ErrClosed; closing twice is harmless.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	if h.events != nil {
		close(h.events)
	}
	if h.file != nil {
		return h.file.close()
	}
	return nil
}

// Crash makes a running or paused guest crash, as the guest or QEMU might.
func (h *Hypervisor) Crash(name string) error {
	unlock, err := h.begin(context.Background(), true)
	if err != nil {
		return err
	}
	defer unlock()
	d, ok := h.guests[name]
	if !ok {
		return noSuch(name)
	}
	if !consumes(d.state) {
		return &TransitionError{Name: name, Op: "crash", State: d.state}
	}
	return h.commitLocked(h.setStateLocked(d, api.StateCrashed, "crashed"))
}

// Vanish removes a guest behind Usher's back (someone ran virsh undefine).
func (h *Hypervisor) Vanish(name string) error {
	unlock, err := h.begin(context.Background(), true)
	if err != nil {
		return err
	}
	defer unlock()
	d, ok := h.guests[name]
	if !ok {
		return noSuch(name)
	}
	return h.commitLocked(h.removeLocked(d, "vanished"))
}

// Appear creates a running guest from outside Usher, subject to capacity.
func (h *Hypervisor) Appear(spec nodemgr.Spec) error {
	if err := validSpec(spec); err != nil {
		return err
	}
	unlock, err := h.begin(context.Background(), true)
	if err != nil {
		return err
	}
	defer unlock()
	if err := h.existsLocked(spec.Name); err != nil {
		return err
	}
	if err := h.checkCapacityLocked(spec); err != nil {
		return err
	}
	return h.commitLocked(h.addLocked(spec, "appeared", false))
}

// SetLoad pins the synthetic CPU load (cores) of a guest, which need not
// exist yet; a negative cpu removes the pin.
func (h *Hypervisor) SetLoad(name string, cpu float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cpu < 0 {
		delete(h.pins, name)
		return
	}
	h.pins[name] = cpu
}
