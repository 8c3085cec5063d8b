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
	"syscall"
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
	hc := ha.Config{Endpoints: eps, Prefix: prefix, TTL: cfg.Duration("controller.etcd_ttl"), ID: id, Address: adv,
		HTTP: advertiseHTTP(cfg), Logger: log.With("component", "ha")}
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
	var known ha.Leader
	var at time.Time
	// Someone asking where the leader is may have just lost it: the
	// standby checks the leader's address at once.
	poke := make(chan struct{}, 1)
	whoLeads := func() ha.Leader {
		select {
		case poke <- struct{}{}:
		default:
		}
		lmu.Lock()
		defer lmu.Unlock()
		// What etcd said (or that it did not answer) is kept a second:
		// a standby cut off from etcd answers at once that it does not
		// know, rather than keep every caller waiting on etcd.
		if time.Since(at) > time.Second {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			l, err := m.CurrentLeader(lctx)
			cancel()
			known, at = ha.Leader{}, time.Now()
			switch {
			case err != nil:
				log.Warn("standby: who leads is not known", "err", err)
			case l.Address != cfg.String("controller.advertise"):
				known = l
			}
		}
		return known
	}
	// While the leader is suspected dead, a standby holds who asks (up to
	// 2 s) until the election ends: LNMs and clients are then sent
	// straight to the new leader — to this controller itself if it won
	// (its address waits for them across the switch, transport.Handoff) —
	// rather than to the dead one or into backoff.
	self := ha.Leader{Address: cfg.String("controller.advertise"), HTTP: advertiseHTTP(cfg)}
	var emu sync.Mutex
	var won bool               // this standby turn ended in an election won
	var holding sync.WaitGroup // callers held (Add only while !won)
	whoLeadsHeld := func() ha.Leader {
		l := whoLeads()
		if l.Term == 0 || l.Term != m.Suspected() {
			return l
		}
		emu.Lock()
		if won {
			emu.Unlock()
			return self
		}
		holding.Add(1)
		emu.Unlock()
		defer holding.Done()
		limit := time.NewTimer(2 * time.Second)
		defer limit.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return ha.Leader{}
			case <-limit.C:
				return ha.Leader{}
			case <-tick.C:
			}
			if _, term := m.Leading(); term > 0 {
				return self
			}
			if n := whoLeads(); n.Term != 0 && n.Term != l.Term {
				return n
			}
		}
	}
	// releaseHeld answers the held callers (this controller leads now)
	// and gives their answers a moment to leave before the standby's
	// sessions close.
	releaseHeld := func() {
		emu.Lock()
		won = true
		emu.Unlock()
		holding.Wait()
		time.Sleep(50 * time.Millisecond)
	}
	leader := func() string { return whoLeadsHeld().Address }
	leaderHTTP := func() (string, string) { l := whoLeadsHeld(); return l.Address, l.HTTP }
	// The addresses are this process's for its whole life, served in
	// turns by the standby and each term's leader: they never refuse a
	// connection while it lives (which is how standbys tell a dead leader).
	ln, err := net.Listen("tcp", cfg.String("controller.listen"))
	if err != nil {
		return fmt.Errorf("controller.listen: %w", err)
	}
	native := transport.NewHandoff(ln)
	defer native.Wait()
	defer native.Close()
	var web *transport.Handoff
	if addr := cfg.String("controller.http_listen"); addr != "" {
		hln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("controller.http_listen: %w", err)
		}
		web = transport.NewHandoff(hln)
		defer web.Wait()
		defer web.Close()
	}
	var stopStandby func()
	standby := func() {
		emu.Lock()
		won = false
		emu.Unlock()
		sctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		run := func(f func()) {
			wg.Add(1)
			go func() { defer wg.Done(); f() }()
		}
		// The site's TLS session ticket keys (the leader keeps them in
		// etcd): LNMs and clients that come here resume their sessions.
		run(func() {
			if err := transport.UseTicketKeysIn(tlsCfg, readOnlyTickets{m.Store(0).TicketKeys()}); err != nil {
				log.Warn("standby: TLS session ticket keys", "err", err)
			}
		})
		run(func() {
			controller.ServeStandby(sctx, native.Turn(), tlsCfg, transport.ServerOptions{Limits: Limits(cfg, "controller."),
				Logger: log.With("component", "transport")}, leader)
		})
		// The HTTP API's address sends its clients to the leader's.
		if web != nil {
			run(func() {
				if err := controller.ServeStandbyHTTP(sctx, web.Turn(), tlsCfg, leaderHTTP); err != nil {
					log.Error("standby: HTTP", "err", err)
				}
			})
		}
		// A leader whose process is gone is replaced at once, not when
		// its lease expires (ha.Member.WatchLeader).
		run(func() { m.WatchLeader(sctx, cfg.Duration("controller.leader_probe"), 2, poke, refusedAt) })
		stopStandby = func() { cancel(); wg.Wait() }
	}
	standby()
	defer func() { stopStandby() }()
	return m.Run(ctx, func(lctx context.Context, term int64) {
		releaseHeld()
		stopStandby()
		defer standby()
		start := time.Now()
		opts := o
		opts.Replicated = m.Store(term)
		opts.Listener = native.Turn()
		if web != nil {
			opts.HTTPListener = web.Turn()
		}
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

// refusedAt connects to addr and reports whether the connection was
// refused (nothing listens there: on a host that is up, the process is
// gone). A timeout or any other failure is not a refusal.
func refusedAt(ctx context.Context, addr string) bool {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return false
}

// advertiseHTTP is the URL of this controller's HTTP API that standbys
// send API clients to: controller.advertise_http, else https:// with the
// host of controller.advertise and the port of controller.http_listen
// ("" when it serves no HTTP API).
func advertiseHTTP(cfg *config.Set) string {
	if u := cfg.String("controller.advertise_http"); u != "" {
		return u
	}
	hl := cfg.String("controller.http_listen")
	if hl == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(hl)
	host, _, err2 := net.SplitHostPort(cfg.String("controller.advertise"))
	if err != nil || err2 != nil {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}

// readOnlyTickets reads the leader's ticket keys; a standby never writes
// them (without keys yet it uses keys of its own for the time being).
type readOnlyTickets struct{ ha.TicketKeys }

func (readOnlyTickets) Save([]byte) error { return nil }
