package ha

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// Config is one controller's place in an HA site.
type Config struct {
	Endpoints []string    // etcd client URLs
	TLS       *tls.Config // for the etcd client (nil: plain, loopback tests only)
	Prefix    string      // key prefix of this site, e.g. "/usher/site1/"
	TTL       time.Duration
	// ID names this controller; Address is where clients and LNMs reach
	// it (what a standby tells them the leader's address is); HTTP is
	// its HTTP API's URL ("" when it serves none).
	ID, Address, HTTP string
	Logger            *slog.Logger
}

// Leader is who leads, as the election says.
type Leader struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	HTTP    string `json:"http,omitempty"` // the HTTP API's URL
	Term    int64  `json:"term"`
	lease   clientv3.LeaseID
}

// ErrNotLeader is returned by guarded writes once this controller no
// longer leads in the term it wrote for.
var ErrNotLeader = errors.New("ha: not the leader (any more)")

// Member is a controller's membership: its etcd client, its lease and
// its campaign.
type Member struct {
	cfg Config
	cli *clientv3.Client
	log *slog.Logger

	suspect atomic.Int64 // a term whose leader's address refused the last probe

	mu      sync.Mutex
	term    int64  // the term it leads in (0: not leading)
	key     string // its election key while leading
	leadCtx context.Context
}

// New connects to etcd (the client dials in the background).
func New(cfg Config) (*Member, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("ha: no etcd endpoints")
	}
	if cfg.ID == "" || cfg.Address == "" {
		return nil, errors.New("ha: a member needs an ID and an address")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.TTL < 2*time.Second {
		cfg.TTL = 2 * time.Second
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: cfg.TLS, DialTimeout: 5 * time.Second,
		DialKeepAliveTime: cfg.TTL / 2, DialKeepAliveTimeout: cfg.TTL / 2,
		Logger: zap.NewNop()}) // its retries are ours to report
	if err != nil {
		return nil, fmt.Errorf("ha: etcd client: %w", err)
	}
	return &Member{cfg: cfg, cli: cli, log: cfg.Logger}, nil
}

// Close closes the etcd client (a leader's lease then expires).
func (m *Member) Close() error { return m.cli.Close() }

// Client is the etcd client (for reads).
func (m *Member) Client() *clientv3.Client { return m.cli }

func (m *Member) electionPrefix() string { return m.cfg.Prefix + "leader/" }

// Leading returns the term this controller leads in and a context that
// ends the moment it stops leading (nil, 0: not leading).
func (m *Member) Leading() (context.Context, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leadCtx, m.term
}

// Key is its election key while it leads ("" otherwise): what a write of
// its term is guarded by.
func (m *Member) Key() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.key
}

// Run campaigns until ctx ends. Each time this controller is elected it
// calls lead with a context that is cancelled when it stops leading —
// its lease expired or could not be renewed in time, or ctx ended — and
// waits for lead to return before campaigning again.
func (m *Member) Run(ctx context.Context, lead func(ctx context.Context, term int64)) error {
	for ctx.Err() == nil {
		if err := m.campaign(ctx, lead); err != nil && ctx.Err() == nil {
			m.log.Warn("leader election: trying again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(m.cfg.TTL / 4):
			}
		}
	}
	return ctx.Err()
}

func (m *Member) campaign(ctx context.Context, lead func(ctx context.Context, term int64)) error {
	ttl := int64(m.cfg.TTL / time.Second)
	gctx, cancel := context.WithTimeout(ctx, m.cfg.TTL)
	grant, err := m.cli.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	lease := grant.ID
	// The lease is vouched for until the last renewal sent that etcd
	// answered, plus its TTL: etcd cannot expire it, let alone elect
	// another leader, before then. Stop acting a margin earlier.
	var vmu sync.Mutex
	vouched := time.Now().Add(time.Duration(grant.TTL) * time.Second)
	keepCtx, stopKeep := context.WithCancel(ctx)
	lost := make(chan struct{})
	defer func() { stopKeep(); <-lost }() // the renewals end with the campaign
	go func() {
		defer close(lost)
		// Renew every TTL/4. A renewal may take until the moment this
		// controller would have to stop anyway (a slow etcd — busy, its
		// disk slow — answers late, and a late answer still vouches from
		// when it was sent); one that fails quickly is tried again soon.
		next := time.Now().Add(m.cfg.TTL / 4)
		for {
			select {
			case <-keepCtx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			sent := time.Now()
			vmu.Lock()
			stopAt := vouched.Add(-m.cfg.TTL / 4)
			vmu.Unlock()
			kctx, cancel := context.WithDeadline(keepCtx, stopAt)
			resp, err := m.cli.KeepAliveOnce(kctx, lease)
			cancel()
			vmu.Lock()
			if err == nil && resp.TTL > 0 {
				vouched = sent.Add(time.Duration(resp.TTL) * time.Second)
			}
			left := time.Until(vouched)
			vmu.Unlock()
			if errors.Is(err, context.Canceled) && keepCtx.Err() != nil {
				return
			}
			if (err != nil && isLeaseGone(err)) || left < m.cfg.TTL/4 {
				m.log.Warn("leadership lease can no longer be vouched for", "err", err, "left", left)
				return
			}
			next = sent.Add(m.cfg.TTL / 4)
			if err != nil {
				m.log.Warn("renewing the leadership lease failed; trying again", "err", err, "left", left)
				next = time.Now().Add(m.cfg.TTL / 20)
			}
		}
	}()
	sess, err := concurrency.NewSession(m.cli, concurrency.WithLease(lease), concurrency.WithContext(keepCtx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer sess.Orphan()
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m.cli.Revoke(rctx, lease)
		cancel()
	}()
	el := concurrency.NewElection(sess, m.electionPrefix())
	me, _ := json.Marshal(Leader{ID: m.cfg.ID, Address: m.cfg.Address, HTTP: m.cfg.HTTP})
	cctx, cancelCampaign := context.WithCancel(keepCtx)
	go func() {
		select {
		case <-lost:
			cancelCampaign()
		case <-cctx.Done():
		}
	}()
	err = el.Campaign(cctx, string(me))
	cancelCampaign()
	if err != nil {
		select {
		case <-lost:
			return errors.New("lease lost while campaigning")
		default:
		}
		return fmt.Errorf("campaign: %w", err)
	}
	term := el.Rev()
	leadCtx, endLead := context.WithCancel(ctx)
	m.mu.Lock()
	m.term, m.key, m.leadCtx = term, el.Key(), leadCtx
	m.mu.Unlock()
	m.log.Info("elected leader", "id", m.cfg.ID, "term", term)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(leadCtx, term)
	}()
	select {
	case <-lost:
		m.log.Warn("stopping as leader: lease lost", "term", term)
	case <-sess.Done():
		m.log.Warn("stopping as leader: session ended", "term", term)
	case <-ctx.Done():
	case <-done:
	}
	m.mu.Lock()
	m.term, m.key, m.leadCtx = 0, "", nil
	m.mu.Unlock()
	endLead()
	<-done
	return nil
}

func isLeaseGone(err error) bool {
	return err != nil && strings.Contains(err.Error(), "requested lease not found")
}

// CurrentLeader asks etcd who leads.
func (m *Member) CurrentLeader(ctx context.Context) (Leader, error) {
	resp, err := m.cli.Get(ctx, m.electionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return Leader{}, err
	}
	if len(resp.Kvs) == 0 {
		return Leader{}, errors.New("ha: no leader elected")
	}
	var l Leader
	if err := json.Unmarshal(resp.Kvs[0].Value, &l); err != nil {
		return Leader{}, fmt.Errorf("ha: leader record: %w", err)
	}
	l.Term, l.lease = resp.Kvs[0].CreateRevision, clientv3.LeaseID(resp.Kvs[0].Lease)
	return l, nil
}

// WatchLeader runs while this controller stands by, until ctx ends: every
// interval it connects to the leader's address (probe). Once it has seen
// the leader of a term accept a connection, and then refusals consecutive
// probes of that term are refused — nothing listens there any more: the
// process is gone (a host that went away times out instead and is left
// to its lease) — it revokes that leader's lease, so that a standby leads
// now rather than when the lease expires. Were the leader alive after
// all, its renewals would fail and it would stop acting, and every write
// or command of its term is refused anyway (guarded writes, LNM terms):
// a wrong guess costs a failover, never two leaders acting.
//
// A receive from poke probes at once (and at most every interval/5):
// LNMs and clients come to a standby when they lose the leader.
func (m *Member) WatchLeader(ctx context.Context, interval time.Duration, refusals int, poke <-chan struct{}, probe func(ctx context.Context, addr string) (refused bool)) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var seenTerm int64 // the term whose leader was seen accepting
	n := 0
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-poke:
			if wait := interval/5 - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
		last = time.Now()
		gctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
		l, err := m.CurrentLeader(gctx)
		cancel()
		if err != nil || l.ID == m.cfg.ID {
			n = 0
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, interval)
		refused := probe(pctx, l.Address)
		cancel()
		switch {
		case !refused:
			seenTerm, n = l.Term, 0
			m.suspect.CompareAndSwap(l.Term, 0)
		case seenTerm == l.Term:
			n++
			m.suspect.Store(l.Term)
		}
		if n < refusals {
			continue
		}
		m.log.Warn("the leader's address refuses connections: its process is gone; revoking its lease to fail over now",
			"leader", l.ID, "address", l.Address, "term", l.Term, "refused", n)
		rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
		if _, err := m.cli.Revoke(rctx, l.lease); err != nil && !isLeaseGone(err) && ctx.Err() == nil {
			m.log.Warn("revoking the dead leader's lease", "err", err)
		}
		cancel()
		seenTerm, n = 0, 0
	}
}

// Suspected is the term whose leader's address refused this standby's
// last probe (0: none): a standby does not send LNMs and clients to a
// leader it believes dead.
func (m *Member) Suspected() int64 { return m.suspect.Load() }

// guard is the condition of a leader's writes: its election key still
// exists with the revision that made it leader.
func (m *Member) guard(term int64) (clientv3.Cmp, error) {
	cmp, _, err := m.guardKey(term)
	return cmp, err
}

// guardKey is guard and the election key it compares.
func (m *Member) guardKey(term int64) (clientv3.Cmp, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.term == 0 || m.term != term {
		return clientv3.Cmp{}, "", ErrNotLeader
	}
	return clientv3.Compare(clientv3.CreateRevision(m.key), "=", term), m.key, nil
}

// Put writes key (under the site prefix) if this controller still leads
// in term.
func (m *Member) Put(ctx context.Context, term int64, key, value string) error {
	return m.Txn(ctx, term, clientv3.OpPut(m.cfg.Prefix+key, value))
}

// Delete removes key if this controller still leads in term.
func (m *Member) Delete(ctx context.Context, term int64, key string) error {
	return m.Txn(ctx, term, clientv3.OpDelete(m.cfg.Prefix+key))
}

// Txn applies ops (keys already prefixed) if this controller still leads
// in term.
func (m *Member) Txn(ctx context.Context, term int64, ops ...clientv3.Op) error {
	cmp, err := m.guard(term)
	if err != nil {
		return err
	}
	resp, err := m.cli.Txn(ctx).If(cmp).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("ha: write: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

// Get reads key (under the site prefix); found is false when it is
// absent.
func (m *Member) Get(ctx context.Context, key string) (value string, found bool, err error) {
	resp, err := m.cli.Get(ctx, m.cfg.Prefix+key)
	if err != nil || len(resp.Kvs) == 0 {
		return "", false, err
	}
	return string(resp.Kvs[0].Value), true, nil
}

// ClientTLS is the etcd client's TLS configuration from a controller's
// certificate, key and the site CA (etcd members verify the certificate;
// the controller verifies theirs against the CA).
func ClientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("ha: etcd client certificate: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("ha: CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ha: CA %s: no certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
