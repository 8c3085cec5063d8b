package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usher-vm/usher/api"

	lv "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/usher-vm/usher/nodemgr"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultSocket          = "/var/run/libvirt/libvirt-sock"
	DefaultDomainType      = "kvm"
	DefaultCmdline         = "console=ttyS0"
	DefaultCallTimeout     = 30 * time.Second
	DefaultLongTimeout     = 10 * time.Minute
	DefaultShutdownTimeout = 60 * time.Second
	DefaultEventBuffer     = 1024
)

// Sentinel errors, matched with errors.Is.
var (
	ErrNoSuchDomain         = nodemgr.ErrNoGuest
	ErrExists               = errors.New("domain already exists")
	ErrInsufficientCapacity = errors.New("insufficient capacity")
	ErrInvalidTransition    = errors.New("invalid state transition")
	ErrNotConnected         = errors.New("not connected to libvirtd")
	ErrClosed               = errors.New("libvirt: driver closed")
)

// Options configure a libvirt driver.
type Options struct {
	Node    string // node name (NodeInfo.Name); required
	Address string // advertised address when MigrationURI is empty
	// Socket is the libvirtd unix socket (default DefaultSocket); URI, when
	// set, is used instead: qemu+unix:///system?socket=…, qemu+tcp://host/system
	// or qemu+tls://host/system (TLS through go-libvirt's dialer, untested).
	Socket string
	URI    string
	// MigrationURI is this host's libvirt URI as the SOURCE libvirtd of a
	// migration reaches it (e.g. "qemu+tcp://10.0.0.2/system", or in tests
	// "qemu+unix:///system?socket=/tmp/x/host2/run/libvirt-sock"). NodeInfo
	// advertises it as Address, and Migrate receives it as address.
	MigrationURI string
	// MigrationHost is the host the migration data stream of an incoming
	// migration connects to, when MigrationURI names none (unix sockets):
	// default 127.0.0.1.
	MigrationHost string
	DomainType    string // "kvm" (default) or "qemu" (TCG, tests)
	Emulator      string // QEMU binary, "" = libvirt's default
	Machine       string // machine type, default "pc"
	// Default direct-kernel boot; spec.Data keys "kernel", "initrd",
	// "cmdline" and "image" (a disk image) override. In cmdline, "{name}"
	// is replaced by the domain name.
	Kernel, Initrd, Cmdline string
	StateDir                string // absolute; save files, XML, markers, serial consoles (required)
	// Network is a libvirt network to attach guests to when no Bridge is
	// set ("" = none).
	Network string
	// ImageDir is the site image store as this node sees it (the same
	// path on every host of a migration domain); a VM's data image=NAME
	// boots from an overlay of NAME there. "" = no images.
	ImageDir string
	// DiskDir holds each VM's overlay (<name>.qcow2) and cloud-init seed
	// (<name>.seed.iso), as libvirtd sees it; default StateDir.
	// LocalDiskDir is where this process finds the same folder, when
	// libvirtd runs in another mount namespace (default DiskDir).
	// DiskMigration says how migrations treat it: DiskShared (default),
	// DiskSharedUnsafe or DiskCopy.
	DiskDir       string
	LocalDiskDir  string
	DiskMigration string
	// Bridge is the host bridge guests' NICs join; VLANBridges the bridge
	// per VLAN (a VM's data vlan=N); with VLANTagging, a VLAN without its
	// own bridge is tagged on Bridge (an Open vSwitch bridge).
	Bridge      string
	VLANBridges map[int]string
	VLANTagging bool
	// QemuImg is the qemu-img binary that makes overlays (default
	// "qemu-img", Debian package qemu-utils).
	QemuImg string
	// VCPUOvercommit is how many vCPUs the node offers per host CPU
	// (NodeInfo.CPUs, what placement counts; default 1). One VM never gets
	// more vCPUs than the host has CPUs.
	VCPUOvercommit int
	// CallTimeout bounds each libvirt call (default 30s); LongTimeout bounds
	// save, restore and migration (default 10m); ShutdownTimeout is the
	// graceful shutdown wait, after which shutdown fails unless
	// OpOptions.Force, which destroys the domain (default 60s).
	CallTimeout     time.Duration
	LongTimeout     time.Duration
	ShutdownTimeout time.Duration
	EventBuffer     int // events channel size (default 1024); events that find it full are dropped
	Logger          *slog.Logger
}

// Driver is a libvirt VMM implementing nodemgr.Driver. All methods are safe
// for concurrent use.
type Driver struct {
	o   Options
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	cur    *lv.Libvirt   // nil while disconnected
	ready  chan struct{} // closed while cur != nil
	closed bool

	dropc   chan *lv.Libvirt // connections calls found hung
	raw     chan item        // supervisor and operations -> processor (never closed)
	supDone chan struct{}    // closed when the supervisor has returned
	events  chan nodemgr.GuestEvent

	skipMu sync.Mutex
	skip   map[string]int // Stopped events to swallow (cycle)

	statMu sync.Mutex
	prev   map[string]counters
	prevAt time.Time

	connects atomic.Int64
	dropped  atomic.Uint64
}

var _ nodemgr.Driver = (*Driver)(nil)

// New connects to libvirtd and starts following its events. It fails if
// the first connection cannot be made within ctx (or CallTimeout).
func New(ctx context.Context, o Options) (*Driver, error) {
	if o.Node == "" {
		return nil, errors.New("libvirt: Options.Node is required")
	}
	if o.StateDir == "" || !filepath.IsAbs(o.StateDir) {
		return nil, fmt.Errorf("libvirt: Options.StateDir must be an absolute path (got %q)", o.StateDir)
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.DomainType == "" {
		o.DomainType = DefaultDomainType
	}
	if o.Machine == "" {
		o.Machine = "pc"
	}
	if o.Cmdline == "" {
		o.Cmdline = DefaultCmdline
	}
	if o.DiskDir == "" {
		o.DiskDir = o.StateDir
	}
	if !filepath.IsAbs(o.DiskDir) {
		return nil, fmt.Errorf("libvirt: Options.DiskDir must be an absolute path (got %q)", o.DiskDir)
	}
	if o.ImageDir != "" && !filepath.IsAbs(o.ImageDir) {
		return nil, fmt.Errorf("libvirt: Options.ImageDir must be an absolute path (got %q)", o.ImageDir)
	}
	if o.LocalDiskDir == "" {
		o.LocalDiskDir = o.DiskDir
	}
	switch o.DiskMigration {
	case "":
		o.DiskMigration = DiskShared
	case DiskShared, DiskSharedUnsafe, DiskCopy:
	default:
		return nil, fmt.Errorf("libvirt: Options.DiskMigration %q: want %s, %s or %s", o.DiskMigration, DiskShared, DiskSharedUnsafe, DiskCopy)
	}
	if o.VCPUOvercommit <= 0 {
		o.VCPUOvercommit = 1
	}
	if o.VCPUOvercommit > 64 {
		return nil, fmt.Errorf("libvirt: Options.VCPUOvercommit %d: at most 64 vCPUs per CPU", o.VCPUOvercommit)
	}
	if o.QemuImg == "" {
		o.QemuImg = "qemu-img"
	}
	if o.MigrationHost == "" {
		o.MigrationHost = "127.0.0.1"
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.LongTimeout <= 0 {
		o.LongTimeout = DefaultLongTimeout
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.URI != "" {
		if _, err := url.Parse(o.URI); err != nil {
			return nil, fmt.Errorf("libvirt: bad URI %q: %w", o.URI, err)
		}
	}
	for _, dir := range []string{o.StateDir, o.LocalDiskDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("libvirt: %w", err)
		}
	}
	d := &Driver{
		o:       o,
		log:     o.Logger.With("node", o.Node),
		ready:   make(chan struct{}),
		dropc:   make(chan *lv.Libvirt, 4),
		raw:     make(chan item, 256),
		supDone: make(chan struct{}),
		events:  make(chan nodemgr.GuestEvent, o.EventBuffer),
		skip:    make(map[string]int),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(2)
	go d.supervise()
	go d.process()
	// Wait for the first connection so configuration errors surface here.
	wctx, cancel := context.WithTimeout(ctx, o.CallTimeout)
	defer cancel()
	if _, err := d.conn(wctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("libvirt: connecting to %s: %w", d.target(), err)
	}
	return d, nil
}

// Kind names the driver.
func (d *Driver) Kind() string { return "libvirt" }

// Capabilities implements nodemgr.Driver: libvirt pushes lifecycle events
// and migrates peer to peer (the target prepares only its disks, when they
// are copied); guests outlive the LNM.
func (d *Driver) Capabilities() nodemgr.Capabilities {
	return nodemgr.Capabilities{Events: true, LiveMigration: true, Persistent: true, PrepareIncoming: d.o.DiskMigration == DiskCopy}
}

// Events delivers lifecycle events; closed by Close.
func (d *Driver) Events() <-chan nodemgr.GuestEvent { return d.events }

// Connects counts the connections made to libvirtd (1 + reconnects).
func (d *Driver) Connects() int64 { return d.connects.Load() }

// Dropped counts events dropped because the events channel was full.
func (d *Driver) Dropped() uint64 { return d.dropped.Load() }

// Close stops following libvirtd and closes the events channel. Domains
// keep running.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	close(d.events)
	return nil
}

func (d *Driver) target() string {
	if d.o.URI != "" {
		return d.o.URI
	}
	return d.o.Socket
}

// dial builds a fresh client and connects it (bounded by CallTimeout).
func (d *Driver) dial() (*lv.Libvirt, error) {
	var l *lv.Libvirt
	var uri lv.ConnectURI = lv.QEMUSystem
	if d.o.URI != "" {
		u, err := url.Parse(d.o.URI)
		if err != nil {
			return nil, err
		}
		if strings.Contains(u.Scheme, "+unix") || u.Host == "" {
			sock := u.Query().Get("socket")
			if sock == "" {
				sock = DefaultSocket
			}
			l = lv.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(d.o.CallTimeout)))
			uri = lv.RemoteURI(u)
		} else {
			var err error
			type res struct {
				l   *lv.Libvirt
				err error
			}
			ch := make(chan res, 1)
			go func() { c, err := lv.ConnectToURI(u); ch <- res{c, err} }()
			select {
			case r := <-ch:
				l, err = r.l, r.err
			case <-time.After(d.o.CallTimeout):
				go func() {
					if r := <-ch; r.l != nil {
						r.l.Disconnect()
					}
				}()
				err = fmt.Errorf("connect timed out after %v", d.o.CallTimeout)
			}
			return l, err
		}
	} else {
		l = lv.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.o.Socket), dialers.WithLocalTimeout(d.o.CallTimeout)))
	}
	ch := make(chan error, 1)
	go func() { ch <- l.ConnectToURI(uri) }()
	select {
	case err := <-ch:
		if err != nil {
			return nil, err
		}
		return l, nil
	case <-time.After(d.o.CallTimeout):
		go func() {
			if <-ch == nil {
				l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("connect timed out after %v", d.o.CallTimeout)
	}
}

// conn returns the current connection, waiting for one (bounded by ctx and
// CallTimeout) while reconnecting.
func (d *Driver) conn(ctx context.Context) (*lv.Libvirt, error) {
	t := time.NewTimer(d.o.CallTimeout)
	defer t.Stop()
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrClosed
		}
		l, ready := d.cur, d.ready
		d.mu.Unlock()
		if l != nil {
			return l, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
		case <-t.C:
			return nil, fmt.Errorf("%w (%s) after %v", ErrNotConnected, d.target(), d.o.CallTimeout)
		case <-d.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// call runs fn on the current connection with a timeout (CallTimeout when
// timeout is 0). A call that times out drops the connection so that the
// supervisor builds a fresh one; a call abandoned because ctx ended keeps
// the connection.
func (d *Driver) call(ctx context.Context, timeout time.Duration, fn func(l *lv.Libvirt) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := d.conn(ctx)
	if err != nil {
		return err
	}
	return d.callOn(ctx, l, timeout, fn)
}

func (d *Driver) callOn(ctx context.Context, l *lv.Libvirt, timeout time.Duration, fn func(l *lv.Libvirt) error) error {
	if timeout <= 0 {
		timeout = d.o.CallTimeout
	}
	done := make(chan error, 1)
	go func() { done <- fn(l) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		d.drop(l)
		return fmt.Errorf("libvirt call timed out after %v (reconnecting)", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drop asks the supervisor to abandon l.
func (d *Driver) drop(l *lv.Libvirt) {
	select {
	case d.dropc <- l:
	default:
	}
}

func (d *Driver) setConn(l *lv.Libvirt) {
	d.mu.Lock()
	d.cur = l
	close(d.ready)
	d.mu.Unlock()
}

func (d *Driver) clearConn() {
	d.mu.Lock()
	if d.cur != nil {
		d.cur = nil
		d.ready = make(chan struct{})
	}
	d.mu.Unlock()
}

// supervise keeps one connection with a lifecycle event subscription,
// reconnecting with a fresh client whenever it is lost. After every
// (re)connection it lists the domains and hands the listing to the
// processor, which emits what changed meanwhile.
func (d *Driver) supervise() {
	defer d.wg.Done()
	defer close(d.supDone)
	backoff := 50 * time.Millisecond
	for d.ctx.Err() == nil {
		l, err := d.dial()
		if err != nil {
			d.log.Debug("libvirt connect failed", "target", d.target(), "err", err)
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		d.follow(l)
	}
}

// follow subscribes to l's lifecycle events and forwards them until l is
// lost, dropped or the driver closes.
func (d *Driver) follow(l *lv.Libvirt) {
	evctx, evcancel := context.WithCancel(d.ctx)
	defer evcancel()
	var evs <-chan lv.DomainEventLifecycleMsg
	err := d.callOn(d.ctx, l, 0, func(l *lv.Libvirt) error {
		var err error
		evs, err = l.LifecycleEvents(evctx)
		return err
	})
	if err != nil {
		d.log.Warn("libvirt event subscription failed", "err", err)
		go l.Disconnect()
		return
	}
	n := d.connects.Add(1)
	if n > 1 {
		d.log.Info("reconnected to libvirtd", "target", d.target(), "connects", n)
	}
	d.setConn(l)
	// The listing runs beside the event pump, never on it.
	listed := make(chan struct{})
	go func() {
		defer close(listed)
		doms, err := d.listOn(d.ctx, l)
		if err != nil {
			d.log.Warn("listing domains after connect failed", "err", err)
			d.drop(l)
			return
		}
		d.send(item{snapshot: doms, snap: true, first: n == 1})
	}()
	lost := l.Disconnected()
loop:
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				break loop
			}
			d.send(item{ev: ev})
		case <-lost:
			lost = nil // evs closes after the streams are torn down
		case bad := <-d.dropc:
			if bad == l {
				d.log.Warn("dropping hung libvirt connection")
				d.clearConn()
				go l.Disconnect()
			}
		case <-d.ctx.Done():
			break loop
		}
	}
	d.clearConn()
	evcancel()
	go l.Disconnect()
	// Drain until the subscription's channel closes, so its goroutine ends.
	t := time.NewTimer(d.o.CallTimeout)
	defer t.Stop()
	for evs != nil {
		select {
		case _, ok := <-evs:
			if !ok {
				evs = nil
			}
		case <-t.C:
			d.log.Warn("event channel did not close")
			evs = nil
		}
	}
	<-listed
}

// send hands an item to the processor unless the driver is closing.
func (d *Driver) send(it item) {
	select {
	case d.raw <- it:
	case <-d.ctx.Done():
	}
}

// emit delivers one event, dropping it if the channel is full (the LNM's
// scans recover).
func (d *Driver) emit(ev nodemgr.GuestEvent) {
	select {
	case d.events <- ev:
	default:
		d.dropped.Add(1)
	}
}

// validName rejects names that cannot be file names in StateDir.
func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") || len(name) > 200 {
		return fmt.Errorf("libvirt: invalid domain name %q", name)
	}
	return nil
}

// isNoDomain reports whether err is libvirt's "domain not found".
func isNoDomain(err error) bool {
	var e lv.Error
	if errors.As(err, &e) {
		return e.Code == uint32(lv.ErrNoDomain)
	}
	return false
}

func stateOf(s lv.DomainState) api.VMState {
	switch s {
	case lv.DomainPaused, lv.DomainPmsuspended:
		return api.StatePaused
	case lv.DomainShutoff:
		return api.StateShutoff
	case lv.DomainCrashed:
		return api.StateCrashed
	}
	return api.StateRunning // running, blocked, being shut down, no state
}
