package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/usher-vm/usher/controller"
	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/transport"
)

// HAMember builds this controller's etcd membership from controller.etcd
// (endpoints), controller.etcd_prefix, controller.etcd_ttl, controller.id
// and controller.advertise, speaking TLS to etcd with the controller's
// certificate when the endpoints are https.
func HAMember(cfg *config.Set, log *slog.Logger) (*ha.Member, error) {
	eps := cfg.Strings("controller.etcd")
	if len(eps) == 0 {
		return nil, errors.New("controller.etcd names no endpoints")
	}
	adv := cfg.String("controller.advertise")
	if adv == "" {
		return nil, errors.New("controller.advertise must be set with controller.etcd: it is the address a standby gives for the leader and the leader announces to LNMs")
	}
	id := cfg.String("controller.id")
	if id == "" {
		h, _ := os.Hostname()
		id = h + "/" + adv
	}
	prefix := cfg.String("controller.etcd_prefix")
	if prefix == "" {
		prefix = "/usher/" + cfg.String("controller.domain") + "/"
	}
	hc := ha.Config{Endpoints: eps, Prefix: prefix, TTL: cfg.Duration("controller.etcd_ttl"), ID: id, Address: adv, Logger: log.With("component", "ha")}
	if strings.HasPrefix(eps[0], "https://") {
		t, err := ha.ClientTLS(cfg.String("controller.cert_file"), cfg.String("controller.key_file"), cfg.String("controller.ca_file"))
		if err != nil {
			return nil, err
		}
		hc.TLS = t
	}
	return ha.New(hc)
}

// RunHA runs a controller of a highly available site until ctx ends: it
// campaigns for leadership; while it leads (a term), it serves as a
// controller whose known LNMs, node modes and reservations live in etcd,
// announcing itself to the known LNMs (they follow it) and rebuilding the
// state from their reports, as after a restart; the moment it stops
// leading everything it serves stops, and it campaigns again. A standby
// answers every client and LNM on controller.listen with where the leader
// is (api.NotLeader), which they follow.
func RunHA(ctx context.Context, cfg *config.Set, o ControllerOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := HAMember(cfg, log)
	if err != nil {
		return err
	}
	defer m.Close()
	log.Info("highly available controller: campaigning", "etcd", cfg.Strings("controller.etcd"), "advertise", cfg.String("controller.advertise"))
	tlsCfg, err := transport.ServerTLS(cfg.String("controller.cert_file"), cfg.String("controller.key_file"), cfg.String("controller.ca_file"))
	if err != nil {
		return err
	}
	// While it stands by it answers on controller.listen with where the
	// leader is (a leader found is remembered for a second).
	var lmu sync.Mutex
	var known string
	var at time.Time
	leader := func() string {
		lmu.Lock()
		defer lmu.Unlock()
		// A known leader is kept a second; not knowing is asked again.
		if known == "" || time.Since(at) > time.Second {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			l, err := m.CurrentLeader(lctx)
			cancel()
			known, at = "", time.Now()
			switch {
			case err != nil:
				log.Warn("standby: who leads is not known", "err", err)
			case l.Address != cfg.String("controller.advertise"):
				known = l.Address
			}
		}
		return known
	}
	var stopStandby func()
	standby := func() {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		ln, err := net.Listen("tcp", cfg.String("controller.listen"))
		if err != nil {
			log.Error("standby: cannot listen (clients and LNMs will not be told where the leader is)", "err", err)
			close(done)
		} else {
			go func() {
				defer close(done)
				controller.ServeStandby(sctx, ln, tlsCfg, transport.ServerOptions{Limits: Limits(cfg, "controller."),
					Logger: log.With("component", "transport")}, leader)
			}()
		}
		stopStandby = func() { cancel(); <-done }
	}
	standby()
	defer func() { stopStandby() }()
	return m.Run(ctx, func(lctx context.Context, term int64) {
		stopStandby()
		defer standby()
		start := time.Now()
		opts := o
		opts.Replicated = m.Store(term)
		opts.Logger = log.With("term", term)
		c, err := NewController(lctx, cfg, opts)
		if err != nil {
			log.Error("elected, but the controller could not start: standing down", "term", term, "err", err)
			return
		}
		log.Info("leading", "term", term, "ready_in", time.Since(start).Round(time.Millisecond))
		if err := c.Run(lctx); err != nil && lctx.Err() == nil {
			log.Error("controller stopped while leading", "term", term, "err", fmt.Sprint(err))
		}
		c.Close()
		log.Warn("no longer leading", "term", term)
	})
}
