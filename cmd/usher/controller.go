package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/scripts"
	"github.com/usher-vm/usher/transport"
)

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
func newPolicyHost(cfg *config.Set, stateDir string, extraDirs []string, log *slog.Logger) (*lua.Host, error) {
	shipped := cfg.String("policy.shipped_dir")
	if shipped == "" {
		var err error
		if shipped, err = extractShipped(filepath.Join(stateDir, "shipped-scripts")); err != nil {
			return nil, err
		}
	}
	mods, err := lua.ParseModuleConfig(cfg.Map("policy.modules"))
	if err != nil {
		return nil, err
	}
	dirs := append([]string{shipped}, cfg.Strings("policy.dirs")...)
	dirs = append(dirs, extraDirs...)
	return lua.New(lua.Options{
		Dirs:       dirs,
		Enabled:    cfg.Strings("policy.enable"),
		Watch:      cfg.Bool("policy.watch"),
		Budget:     cfg.Duration("policy.budget"),
		MemLimitMB: cfg.Int("policy.mem_limit_mb"),
		Config:     policyConfig(cfg.Map("policy.config")),
		StorePath:  filepath.Join(stateDir, "policy-store.json"),
		Modules:    mods,
		Logger:     log.With("room", "lua"),
	})
}

// policyAdmin serves the admin policy calls from the Lua host.
func policyAdmin(h *lua.Host) transport.PolicyAdmin {
	return func(ctx context.Context, id core.Identity, a core.PolicyArgs) (any, error) {
		switch a.Action {
		case "status", "":
			return h.Status(), nil
		case "register":
			return map[string]bool{"ok": true}, h.Register(a.Script, a.Event, a.Handler, a.Order)
		case "unregister":
			return map[string]bool{"ok": true}, h.Unregister(a.Script, a.Event)
		}
		return nil, transport.Errorf(transport.CodeBadRequest, "unknown policy action %q (status, register, unregister)", a.Action)
	}
}

func controllerConfig(cfg *config.Set, log *slog.Logger) core.Config {
	return core.Config{
		Domain:        cfg.String("controller.domain"),
		StartTimeout:  cfg.Duration("controller.start_timeout"),
		OpTimeout:     cfg.Duration("controller.op_timeout"),
		DefaultMemMB:  cfg.Int("controller.default_mem_mb"),
		DefaultVCPUs:  cfg.Int("controller.default_vcpus"),
		MaxRequestVMs: cfg.Int("controller.max_request_vms"),
		EventBuffer:   cfg.Int("controller.event_buffer"),
		OwnerOnly:     cfg.Bool("controller.owner_only"),
		Logger:        log.With("room", "core"),
	}
}

func limits(cfg *config.Set) transport.Limits {
	l := transport.DefaultLimits()
	l.KeepAlive = cfg.Duration("controller.keepalive")
	l.WriteTimeout = cfg.Duration("controller.write_timeout")
	l.MaxStreams = cfg.Int("controller.max_streams")
	return l
}

func runController(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := params()
	fs := newFlags("controller", "[flags]", `Runs the Usher controller: authenticates users through the policy chain,
keeps the global state, and drives the LNMs that connect with certificates
signed by the site CA. Policies are Lua scripts (shipped ones enabled by
policy.enable, plus every script in policy.dirs, hot-reloaded).

Example:
  usher ca init --dir /etc/usher/pki
  usher ca issue --dir /etc/usher/pki --role controller --name ctl --host ctl.example.org
  usher controller --listen :7070 --cert-file /etc/usher/pki/ctl.crt \
      --key-file /etc/usher/pki/ctl.key --ca-file /etc/usher/pki/ca.crt`, errOut)
	cfg.BindFlags(fs, "controller.", "policy.", "log.")
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return err
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return err
	}
	log, err := logger(cfg.String("log.level"), cfg.String("log.format"), errOut)
	if err != nil {
		return err
	}
	for _, k := range []string{"controller.cert_file", "controller.key_file", "controller.ca_file"} {
		if cfg.String(k) == "" {
			return fmt.Errorf("%s is not set (see usher ca --help)", k)
		}
	}
	tlsCfg, err := transport.ServerTLS(cfg.String("controller.cert_file"), cfg.String("controller.key_file"), cfg.String("controller.ca_file"))
	if err != nil {
		return err
	}
	if mb := cfg.Int("controller.memory_limit_mb"); mb != 0 {
		if mb < 64 {
			return fmt.Errorf("controller.memory_limit_mb: %d MiB is too small to run a controller (at least 64)", mb)
		}
		debug.SetMemoryLimit(int64(mb) << 20)
		log.Info("memory limit set", "mib", mb)
	}
	if addr := cfg.String("controller.pprof"); addr != "" {
		if err := servePprof(ctx, "controller.pprof", addr, log); err != nil {
			return err
		}
	}
	stateDir := cfg.String("controller.state_dir")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// TLS sessions survive a restart: the site reconnects with resumed
	// handshakes. The keys rotate daily (checked hourly).
	tickets := filepath.Join(stateDir, "tls-ticket-keys")
	if err := transport.UseTicketKeys(tlsCfg, tickets); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := transport.UseTicketKeys(tlsCfg, tickets); err != nil {
					log.Error("rotating TLS session ticket keys", "err", err)
				}
			}
		}
	}()
	host, err := newPolicyHost(cfg, stateDir, nil, log)
	if err != nil {
		return err
	}
	defer host.Close()
	c := core.New(controllerConfig(cfg, log), host)
	host.Bind(c.State(), c)
	host.SetErrorSink(c.ReportError)
	if err := host.Start(ctx); err != nil {
		log.Error("some policy scripts failed to load", "err", err)
	}
	known, err := transport.LoadKnownLNMs(filepath.Join(stateDir, "known-lnms.json"))
	if err != nil {
		return err
	}
	announceTLS, err := transport.AnnounceTLS(cfg.String("controller.ca_file"), cfg.String("controller.cert_file"), cfg.String("controller.key_file"))
	if err != nil {
		return err
	}
	srv := transport.NewControllerServer(c, tlsCfg, transport.ControllerOptions{
		Known:        known,
		ControllerID: randomPassword(),
		Server: transport.ServerOptions{Limits: limits(cfg), Logger: log.With("room", "transport"),
			MaxHandshaking: cfg.Int("controller.max_handshaking"), MaxPerIP: cfg.Int("controller.max_per_ip")},
		ReportInterval: cfg.Duration("controller.report_interval"),
		Policy:         policyAdmin(host),
	})
	ln, err := net.Listen("tcp", cfg.String("controller.listen"))
	if err != nil {
		return err
	}
	log.Info("controller listening", "addr", ln.Addr().String(), "domain", cfg.String("controller.domain"))
	self := cfg.String("controller.advertise")
	if self == "" {
		self = ln.Addr().String()
	}
	sizes := filepath.Join(stateDir, "state-size.json")
	hint, err := loadSizeHint(sizes)
	if err != nil {
		log.Warn("state size hint ignored", "err", err)
	}
	if list := known.List(); len(list) > 0 {
		// A restart: size the state, and expect the LNMs before any is
		// back (Recover repeats it), so their adoptions are held back from
		// the clients' feeds until the state is whole.
		c.State().Reserve(hint)
		c.ExpectLNMs(list)
		if pct := cfg.Int("controller.recovery_gc_percent"); pct > 0 {
			gcWhileRecovering(ctx, c, pct, log)
		}
	}
	hctx, stopHint := context.WithCancel(ctx)
	hintDone := make(chan struct{})
	go func() {
		defer close(hintDone)
		keepSizeHint(hctx, c.State(), sizes, hint.VMs, log)
	}()
	go srv.Recover(ctx, announceTLS, self, cfg.Duration("controller.grace"))
	err = srv.Serve(ctx, ln)
	c.Wait()
	stopHint()
	<-hintDone
	if ferr := known.Flush(); ferr != nil {
		log.Error("saving known LNMs", "err", ferr)
	}
	return err
}

// gcWhileRecovering sets the GC percent to pct until c's state is whole
// (or ctx ends), then puts the previous one back. Rebuilding the state
// only adds to the heap, so collecting as often as usual is wasted work.
func gcWhileRecovering(ctx context.Context, c *core.Controller, pct int, log *slog.Logger) {
	prev := debug.SetGCPercent(pct)
	log.Info("recovering: GC percent raised until the state is whole", "percent", pct, "was", prev)
	go func() {
		select {
		case <-c.Recovered():
		case <-ctx.Done():
		}
		debug.SetGCPercent(prev)
		log.Info("GC percent back", "percent", prev)
	}()
}

// servePprof serves net/http/pprof on a loopback address only.
func servePprof(ctx context.Context, key, addr string, log *slog.Logger) error {
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
	go srv.Serve(ln)
	context.AfterFunc(ctx, func() { srv.Close() })
	log.Info("pprof listening", "addr", ln.Addr().String())
	return nil
}
