package site

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/controller"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules"
	"github.com/usher-vm/usher/scripts"
	"github.com/usher-vm/usher/transport"
)

// ControllerOptions are what a configuration file cannot say: a policy
// other than the Lua host (tests), more policy directories (the demo's),
// the logger.
type ControllerOptions struct {
	// Hooks replaces the Lua policy host built from policy.* (tests of
	// the mechanism). Bind is called once the controller exists; Policy
	// serves the admin policy calls then.
	Hooks  core.Hooks
	Bind   func(*core.Controller)
	Policy controller.PolicyAdmin
	// ExtraPolicyDirs are watched after policy.dirs.
	ExtraPolicyDirs []string
	// Replicated, for a leader of a highly available site (RunHA), is
	// the term's replicated state in etcd: known LNMs, node modes and
	// reservations come from it and go to it instead of the state
	// directory.
	Replicated *ha.Store
	// Listener and HTTPListener, when set, are served instead of
	// listening on controller.listen and controller.http_listen (a
	// highly available controller's turn of its address,
	// transport.Handoff).
	Listener, HTTPListener net.Listener
	Logger                 *slog.Logger
}

// Controller is an assembled controller process: TLS with session tickets
// that survive a restart, the policy host, the core, the network endpoint,
// the known-LNM file, the state size hint and crash recovery. Run serves
// until its context ends; Close stops it; nothing it started runs after.
type Controller struct {
	Core   *core.Controller
	Server *controller.Server
	Host   *lua.Host // nil when ControllerOptions.Hooks was given

	cfg      *config.Set
	log      *slog.Logger
	ln       net.Listener
	httpLn   net.Listener // the HTTP API's, when controller.http_listen is set
	tls      *tls.Config
	tickets  transport.TicketStore
	announce *tls.Config
	stateDir string
	known    controller.KnownStore
	hint     core.SizeHint
	self     string

	mu      sync.Mutex
	running bool
	stop    context.CancelFunc
	done    chan struct{}
	closed  bool
}

// NewController assembles a controller from cfg (see Params): it reads its
// state directory, loads the policies and listens on controller.listen.
// Nothing is served before Run.
func NewController(ctx context.Context, cfg *config.Set, o ControllerOptions) (*Controller, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, k := range []string{"controller.cert_file", "controller.key_file", "controller.ca_file"} {
		if cfg.String(k) == "" {
			return nil, fmt.Errorf("%s is not set (see usher ca --help)", k)
		}
	}
	tlsCfg, err := transport.ServerTLS(cfg.String("controller.cert_file"), cfg.String("controller.key_file"), cfg.String("controller.ca_file"))
	if err != nil {
		return nil, err
	}
	announce, err := transport.AnnounceTLS(cfg.String("controller.ca_file"), cfg.String("controller.cert_file"), cfg.String("controller.key_file"))
	if err != nil {
		return nil, err
	}
	if mb := cfg.Int("controller.memory_limit_mb"); mb != 0 {
		if mb < 64 {
			return nil, fmt.Errorf("controller.memory_limit_mb: %d MiB is too small to run a controller (at least 64)", mb)
		}
		debug.SetMemoryLimit(int64(mb) << 20)
		log.Info("memory limit set", "mib", mb)
	}
	stateDir := cfg.String("controller.state_dir")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	// TLS sessions survive a restart: the site reconnects with resumed
	// handshakes. The keys rotate daily (checked hourly by Run).
	tickets := transport.TicketStore(transport.TicketFile(filepath.Join(stateDir, "tls-ticket-keys")))
	if o.Replicated != nil {
		tickets = o.Replicated.TicketKeys() // the same for every leader
	}
	if err := transport.UseTicketKeysIn(tlsCfg, tickets); err != nil {
		return nil, err
	}
	ccfg, err := coreConfig(cfg, log)
	if err != nil {
		return nil, err
	}
	// What a controller alone keeps in its state directory, highly
	// available ones keep in etcd.
	blob := func(name, file string) controller.Blob {
		if o.Replicated != nil {
			return o.Replicated.Blob(name)
		}
		return controller.FileBlob(filepath.Join(stateDir, file))
	}
	keys, err := controller.LoadKeyStoreFrom(blob("ssh-keys", "ssh-keys.json"), log)
	if err != nil {
		return nil, err
	}
	ccfg.GuestKeys = keys.Keys
	if o.Replicated != nil {
		if err := o.Replicated.Load(); err != nil {
			return nil, err
		}
	}
	modesDoc, resDoc := blob("node-modes", "node-modes.json"), blob("reservations", "reservations.json")
	modes, err := controller.LoadNodeModes(modesDoc, log)
	if err != nil {
		return nil, err
	}
	reservations, err := controller.LoadReservations(resDoc, log)
	if err != nil {
		return nil, err
	}
	ccfg.SaveModes = controller.SaveJSON[map[string]core.ModeRecord](modesDoc, "node modes")
	ccfg.SaveReservations = controller.SaveJSON[[]api.Reservation](resDoc, "reservations")
	if argv := cfg.Strings("controller.fence_command"); len(argv) > 0 {
		ccfg.Fence = controller.FenceCommand(argv, log.With("component", "controller"))
		ccfg.FenceTimeout = cfg.Duration("controller.fence_timeout")
	}
	metrics := controller.NewMetrics()
	ccfg.Observe = metrics.Observe
	tokens, err := controller.LoadTokenStoreFrom(blob("api-tokens", "api-tokens.json"), log)
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: log, tls: tlsCfg, announce: announce, stateDir: stateDir, tickets: tickets}
	hooks, policy := o.Hooks, o.Policy
	if hooks == nil {
		host, err := newPolicyHost(cfg, stateDir, o.ExtraPolicyDirs, o.Replicated, log)
		if err != nil {
			return nil, err
		}
		c.Host, hooks, policy = host, host, policyAdmin(host)
	}
	c.Core = core.New(ccfg, hooks)
	c.Core.RestoreModes(modes)
	c.Core.RestoreReservations(reservations)
	fail := func(err error) (*Controller, error) {
		c.Core.Close()
		if c.Host != nil {
			c.Host.Close()
		}
		return nil, err
	}
	if c.Host != nil {
		c.Host.Bind(c.Core.State(), c.Core)
		c.Host.SetErrorSink(c.Core.ReportError)
		if err := c.Host.Start(ctx); err != nil {
			log.Error("some policy scripts failed to load", "err", err)
		}
	}
	if o.Bind != nil {
		o.Bind(c.Core)
	}
	if o.Replicated != nil {
		c.known = o.Replicated
	} else if c.known, err = controller.LoadKnownLNMs(filepath.Join(stateDir, "known-lnms.json"), log); err != nil {
		return fail(err)
	}
	c.Server = controller.New(c.Core, tlsCfg, controller.Options{
		Known:        c.known,
		Keys:         keys,
		Tokens:       tokens,
		Metrics:      metrics,
		ImageDir:     cfg.String("controller.image_dir"),
		ControllerID: randomID(),
		Term:         o.Replicated.Term(),
		Server: transport.ServerOptions{Limits: Limits(cfg, "controller."), Logger: log.With("component", "transport"),
			MaxHandshaking: cfg.Int("controller.max_handshaking"), MaxPerIP: cfg.Int("controller.max_per_ip"),
			MaxPendingPerIP: cfg.Int("controller.max_pending_per_ip"), LoginTimeout: cfg.Duration("controller.login_timeout"),
			MaxPartial: int64(cfg.Int("controller.max_partial_mb")) << 20},
		Logins: controller.LoginLimits{Free: cfg.Int("controller.login_free"), Base: cfg.Duration("controller.login_backoff"),
			Max: cfg.Duration("controller.login_backoff_max")},
		ReportInterval: cfg.Duration("controller.report_interval"),
		Policy:         policy,
		Logger:         log.With("component", "controller"),
	})
	c.ln = o.Listener
	if c.ln == nil {
		if c.ln, err = net.Listen("tcp", cfg.String("controller.listen")); err != nil {
			return fail(fmt.Errorf("controller.listen: %w", err))
		}
	}
	if addr := cfg.String("controller.http_listen"); o.HTTPListener != nil {
		c.httpLn = o.HTTPListener
	} else if addr != "" {
		if c.httpLn, err = net.Listen("tcp", addr); err != nil {
			c.ln.Close()
			return fail(fmt.Errorf("controller.http_listen: %w", err))
		}
		log.Info("HTTP API listening", "addr", "https://"+c.httpLn.Addr().String()+"/api/v1/")
	}
	log.Info("controller listening", "addr", c.ln.Addr().String(), "domain", ccfg.Domain)
	c.self = cfg.String("controller.advertise")
	if c.self == "" {
		c.self = c.ln.Addr().String()
	}
	c.hint = loadSizeHint(filepath.Join(stateDir, "state-size.json"), log)
	if list := c.known.List(); len(list) > 0 {
		// A restart: size the state, and expect the LNMs before any is
		// back (Recover repeats it), so their adoptions are held back from
		// the clients' feeds until the state is whole.
		c.Core.State().Reserve(c.hint)
		c.Core.ExpectLNMs(list)
	}
	return c, nil
}

// Addr is the address the controller listens on.
func (c *Controller) Addr() string { return c.ln.Addr().String() }

// HTTPAddr is the HTTP API's address ("" when it is off).
func (c *Controller) HTTPAddr() string {
	if c.httpLn == nil {
		return ""
	}
	return c.httpLn.Addr().String()
}

// Run serves until ctx ends or Close is called: the endpoint, crash
// recovery, ticket key rotation, the size hint and (if configured)
// pprof. It returns once all of it has stopped and the core and policy
// host are closed.
func (c *Controller) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running || c.closed {
		c.mu.Unlock()
		return errors.New("controller: already running or closed")
	}
	c.running = true
	ctx, c.stop = context.WithCancel(ctx)
	c.done = make(chan struct{})
	c.mu.Unlock()
	defer close(c.done)
	defer c.stop()
	var wg sync.WaitGroup
	bg := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	if addr := c.cfg.String("controller.pprof"); addr != "" {
		if err := ServePprof(ctx, &wg, "controller.pprof", addr, c.log); err != nil {
			c.shutdown()
			return err
		}
	}
	if pct := c.cfg.Int("controller.recovery_gc_percent"); pct > 0 && len(c.known.List()) > 0 {
		bg(func() { gcWhileRecovering(ctx, c.Core, pct, c.log, nil) })
	}
	bg(func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := transport.UseTicketKeysIn(c.tls, c.tickets); err != nil {
					c.log.Error("rotating TLS session ticket keys", "err", err)
				}
			}
		}
	})
	bg(func() {
		keepSizeHint(ctx, c.Core.State(), filepath.Join(c.stateDir, "state-size.json"), c.hint.VMs, c.log)
	})
	bg(func() { c.Server.Recover(ctx, c.announce, c.self, c.cfg.Duration("controller.grace")) })
	if c.httpLn != nil {
		bg(func() {
			if err := c.Server.ServeHTTP(ctx, c.httpLn, c.tls, controller.HTTPOptions{}); err != nil {
				c.log.Error("HTTP API stopped", "err", err)
			}
		})
	}
	err := c.Server.Serve(ctx, c.ln)
	c.stop()
	wg.Wait()
	c.shutdown()
	if ferr := c.known.Flush(); ferr != nil {
		c.log.Error("saving known LNMs", "err", ferr)
	}
	return err
}

// shutdown closes the core (its batches finish) and the policy host.
func (c *Controller) shutdown() {
	c.Core.Close()
	if c.Host != nil {
		c.Host.Close()
	}
}

// Close stops Run and waits for it; a controller never run releases its
// listener, core and policy host.
func (c *Controller) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	running, stop, done := c.running, c.stop, c.done
	c.mu.Unlock()
	if running {
		stop()
		<-done
		return
	}
	c.ln.Close()
	if c.httpLn != nil {
		c.httpLn.Close()
	}
	c.shutdown()
}

// coreConfig is the core's part of the configuration.
func coreConfig(cfg *config.Set, log *slog.Logger) (core.Config, error) {
	adopt, err := core.ParseAdoptMode(cfg.String("controller.adopt"))
	if err != nil {
		return core.Config{}, fmt.Errorf("controller.adopt: %w", err)
	}
	return core.Config{
		Domain:        cfg.String("controller.domain"),
		StartTimeout:  cfg.Duration("controller.start_timeout"),
		OpTimeout:     cfg.Duration("controller.op_timeout"),
		DefaultMemMB:  cfg.Int("controller.default_mem_mb"),
		DefaultVCPUs:  cfg.Int("controller.default_vcpus"),
		MaxRequestVMs: cfg.Int("controller.max_request_vms"),
		EventBuffer:   cfg.Int("controller.event_buffer"),
		OwnerOnly:     cfg.Bool("controller.owner_only"),
		Adopt:         adopt,
		AdoptWindow:   cfg.Duration("controller.grace"),
		Logger:        log.With("component", "core"),
	}, nil
}

// Limits are the link limits of a process from its parameters (prefix
// "controller." or "lnm.").
func Limits(cfg *config.Set, prefix string) transport.Limits {
	l := transport.DefaultLimits()
	l.KeepAlive = cfg.Duration(prefix + "keepalive")
	l.WriteTimeout = cfg.Duration(prefix + "write_timeout")
	if prefix == "controller." {
		l.MaxStreams = cfg.Int("controller.max_streams")
		l.MaxFrameUnauth = cfg.Int("controller.max_frame_unauth")
		l.FrameTimeout = cfg.Duration("controller.frame_timeout")
	}
	return l
}

// extractShipped writes the shipped scripts built into the binary to dir
// and returns it.
func extractShipped(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	err := fs.WalkDir(scripts.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() { // lib/: the shared libraries require loads
			return os.MkdirAll(filepath.Join(dir, p), 0o755)
		}
		b, err := scripts.FS.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("writing shipped scripts: %w", err)
	}
	return dir, nil
}

// policyConfig converts the policy.config map into per-script sections.
func policyConfig(m map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			out[k] = sub
		}
	}
	return out
}

// newPolicyHost builds the Lua host from the policy.* parameters.
func newPolicyHost(cfg *config.Set, stateDir string, extraDirs []string, replicated *ha.Store, log *slog.Logger) (*lua.Host, error) {
	shipped := cfg.String("policy.shipped_dir")
	if shipped == "" {
		var err error
		if shipped, err = extractShipped(filepath.Join(stateDir, "shipped-scripts")); err != nil {
			return nil, err
		}
	}
	mods, modTimeout, err := modules.Open(cfg.Map("policy.modules"))
	if err != nil {
		return nil, err
	}
	dirs := append([]string{shipped}, cfg.Strings("policy.dirs")...)
	dirs = append(dirs, extraDirs...)
	maxStore := int64(cfg.Int("policy.store_max_mb")) << 20
	var store lua.KV
	if replicated != nil {
		store = replicated.KV(0, 0, maxStore) // usher.store in etcd: the same for every leader
	}
	return lua.New(lua.Options{
		Store:         store,
		Dirs:          dirs,
		Enabled:       cfg.Strings("policy.enable"),
		Watch:         cfg.Bool("policy.watch"),
		Budget:        cfg.Duration("policy.budget"),
		Instructions:  uint64(max(cfg.Int("policy.budget_instructions"), 1000)),
		MemLimitMB:    cfg.Int("policy.mem_limit_mb"),
		Config:        policyConfig(cfg.Map("policy.config")),
		StorePath:     filepath.Join(stateDir, "policy-store.db"),
		StoreLimits:   lua.StoreLimits{MaxTotal: maxStore},
		Files:         cfg.Strings("policy.files"),
		ImageDir:      cfg.String("controller.image_dir"),
		Modules:       mods, // the host closes them
		ModuleTimeout: modTimeout,
		Logger:        log.With("component", "lua"),
	})
}

// policyAdmin serves the admin policy calls from the Lua host.
func policyAdmin(h *lua.Host) controller.PolicyAdmin {
	return func(ctx context.Context, id api.Identity, a api.PolicyArgs) (api.PolicyReply, error) {
		switch a.Action {
		case "status", "":
			return api.PolicyReply{Scripts: h.Status(), NotifyDropped: h.NotifyDropped()}, nil
		case "register":
			if err := h.Register(a.Script, a.Event, a.Handler, a.Order); err != nil {
				return api.PolicyReply{}, api.Errorf(api.ErrBadRequest, "%v", err)
			}
			return api.PolicyReply{}, nil
		case "unregister":
			if err := h.Unregister(a.Script, a.Event); err != nil {
				return api.PolicyReply{}, api.Errorf(api.ErrBadRequest, "%v", err)
			}
			return api.PolicyReply{}, nil
		}
		return api.PolicyReply{}, api.Errorf(api.ErrBadRequest, "unknown policy action %q (status, register, unregister)", a.Action)
	}
}

// gcWhileRecovering sets the GC percent to pct until c's state is whole
// (or ctx ends), then puts the previous one back. Rebuilding the state
// only adds to the heap, so collecting as often as usual is wasted work.
// raised, when not nil, is closed once the percent is set.
func gcWhileRecovering(ctx context.Context, c *core.Controller, pct int, log *slog.Logger, raised chan<- struct{}) {
	prev := debug.SetGCPercent(pct)
	log.Info("recovering: GC percent raised until the state is whole", "percent", pct, "was", prev)
	if raised != nil {
		close(raised)
	}
	select {
	case <-c.Recovered():
	case <-ctx.Done():
	}
	debug.SetGCPercent(prev)
	log.Info("GC percent back", "percent", prev)
}

// ServePprof serves net/http/pprof on a loopback address only, in wg,
// until ctx ends.
func ServePprof(ctx context.Context, wg *sync.WaitGroup, key, addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s: %q is not a loopback address", key, addr)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/heap", pprof.Index)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		srv.Serve(ln)
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("pprof listening", "addr", ln.Addr().String())
	return nil
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}
