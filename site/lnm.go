package site

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/nodemgr"
	"github.com/usher-vm/usher/nodemgr/drivers"
	"github.com/usher-vm/usher/transport"
)

// LNMOptions are what one LNM of a process changes of the configuration
// (a process may run many: `usher lnm --count`, the embedded site) and
// what a configuration file cannot say.
type LNMOptions struct {
	Name     string // lnm.name
	CertFile string // lnm.cert_file
	KeyFile  string // lnm.key_file
	// Set overrides parameters for this LNM (lnm.sim_state_file, say).
	Set map[string]any
	// Driver replaces the driver lnm.driver would make (tests).
	Driver nodemgr.Driver
	// MinBackoff and MaxBackoff bound the reconnect backoff (0: the
	// LNM's defaults).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// LNM is an assembled local node manager: its TLS identity, its VMM
// driver (from the driver registry), the recovery listener and the
// nodemgr.LNM. Run serves until its context ends and then closes the
// driver.
type LNM struct {
	*nodemgr.LNM
	drv     nodemgr.Driver
	metrics *lnmMetrics // nil unless lnm.metrics_listen is set
}

// Driver is the LNM's VMM driver.
func (l *LNM) Driver() nodemgr.Driver { return l.drv }

// overlay reads o.Set first, then the configuration.
type overlay struct {
	base *config.Set
	set  map[string]any
}

func (o overlay) String(k string) string {
	if v, ok := o.set[k].(string); ok {
		return v
	}
	return o.base.String(k)
}

func (o overlay) Int(k string) int {
	if v, ok := o.set[k].(int); ok {
		return v
	}
	return o.base.Int(k)
}

func (o overlay) Duration(k string) time.Duration {
	if v, ok := o.set[k].(time.Duration); ok {
		return v
	}
	return o.base.Duration(k)
}

func (o overlay) Bool(k string) bool {
	if v, ok := o.set[k].(bool); ok {
		return v
	}
	return o.base.Bool(k)
}

func (o overlay) Strings(k string) []string {
	if v, ok := o.set[k].([]string); ok {
		return v
	}
	return o.base.Strings(k)
}

// NewLNM assembles an LNM from cfg (see Params) and o.
func NewLNM(ctx context.Context, cfg *config.Set, o LNMOptions) (*LNM, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := overlay{cfg, o.Set}
	name, cert, key := o.Name, o.CertFile, o.KeyFile
	if name == "" {
		name = c.String("lnm.name")
	}
	if cert == "" {
		cert = c.String("lnm.cert_file")
	}
	if key == "" {
		key = c.String("lnm.key_file")
	}
	if name == "" {
		return nil, fmt.Errorf("lnm.name is not set")
	}
	for k, v := range map[string]string{"lnm.cert_file": cert, "lnm.key_file": key, "lnm.ca_file": c.String("lnm.ca_file")} {
		if v == "" {
			return nil, fmt.Errorf("%s is not set (see usher ca --help)", k)
		}
	}
	sn := c.String("lnm.server_name")
	if sn == "" {
		first, _, _ := strings.Cut(c.String("lnm.controller"), ",")
		host, _, err := net.SplitHostPort(strings.TrimSpace(first))
		if err != nil {
			return nil, fmt.Errorf("lnm.controller: %w", err)
		}
		sn = host
	}
	caFile := c.String("lnm.ca_file")
	tlsCfg, err := transport.ClientTLS(caFile, cert, key, sn)
	if err != nil {
		return nil, err
	}
	var recTLS *tls.Config
	if c.String("lnm.recovery_listen") != "" {
		if recTLS, err = transport.RecoveryServerTLS(caFile, cert, key); err != nil {
			return nil, err
		}
	}
	drv := o.Driver
	if drv == nil {
		kind, err := drivers.Lookup(c.String("lnm.driver"))
		if err != nil {
			return nil, err
		}
		if drv, err = kind.New(ctx, name, c.String("lnm.address"), c, log); err != nil {
			return nil, fmt.Errorf("%s driver: %w", kind.Name, err)
		}
	}
	var lm *lnmMetrics
	used := drv
	if addr := c.String("lnm.metrics_listen"); addr != "" {
		if lm, err = newLNMMetrics(addr, cert, key, c.String("lnm.metrics_token_file")); err != nil {
			drv.Close()
			return nil, err
		}
		used = nodemgr.Instrument(drv, lm.observe)
	}
	l, err := nodemgr.New(nodemgr.Options{Name: name, Address: c.String("lnm.address"), Controller: c.String("lnm.controller"),
		TLS: tlsCfg, Driver: used, Limits: Limits(cfg, "lnm."), ScanInterval: c.Duration("lnm.scan_interval"),
		Logger: log.With("component", "nodemgr"), RecoveryListen: c.String("lnm.recovery_listen"), RecoveryTLS: recTLS,
		MinBackoff: o.MinBackoff, MaxBackoff: o.MaxBackoff})
	if err != nil {
		if lm != nil {
			lm.ln.Close()
		}
		drv.Close()
		return nil, err
	}
	if lm != nil {
		lm.node = l
	}
	return &LNM{LNM: l, drv: drv, metrics: lm}, nil
}

// MetricsAddr is where the LNM serves its metrics ("" = off).
func (l *LNM) MetricsAddr() string {
	if l.metrics == nil {
		return ""
	}
	return l.metrics.ln.Addr().String()
}

// Run serves the controller (and the metrics, if configured) until ctx
// ends, then closes the driver (its guests keep running).
func (l *LNM) Run(ctx context.Context) error {
	defer l.drv.Close()
	if l.metrics != nil {
		done := make(chan struct{})
		go func() { defer close(done); l.metrics.serve(ctx) }()
		defer func() { <-done }()
	}
	return l.LNM.Run(ctx)
}
