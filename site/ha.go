package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/ha"
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
// serves nothing: clients and LNMs configured with every controller's
// address try the next.
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
	return m.Run(ctx, func(lctx context.Context, term int64) {
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
