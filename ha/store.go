package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/usher-vm/usher/api"
)

// Store is the replicated state a leader reads when its term begins and
// writes while it lasts, under the site prefix: lnms/<name> (the known
// LNMs), blobs/<name> (documents: node modes, reservations, API tokens,
// SSH keys) and store/<key> (usher.store, KV). Every write is guarded by
// the term: once another controller leads, it fails with ErrNotLeader.
type Store struct {
	m    *Member
	term int64

	mu      sync.Mutex
	known   map[string]api.NodeInfo // as last read or written
	lastErr error

	// Known-LNM writes wait here and go to etcd together (group commit):
	// a site's first registrations are thousands of them at once, which
	// as separate transactions kept etcd too busy to renew the leader's
	// lease in time.
	wmu      sync.Mutex
	pending  []pendingPut
	flushing bool
}

type pendingPut struct {
	key, value string
	done       chan error
}

// maxBatch is the puts of one transaction (etcd's default limit is 128
// operations, one of them the guard's comparison aside).
const maxBatch = 100

// Store returns the replicated state of term.
func (m *Member) Store(term int64) *Store { return &Store{m: m, term: term} }

// Term is the leadership term the store writes for (0 for a nil store:
// a controller that is not highly available).
func (s *Store) Term() int64 {
	if s == nil {
		return 0
	}
	return s.term
}

// opTimeout bounds one etcd call of the store.
const opTimeout = 10 * time.Second

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// Load reads the known LNMs (the first call of a term).
func (s *Store) Load() error {
	ctx, cancel := s.ctx()
	defer cancel()
	resp, err := s.m.cli.Get(ctx, s.m.cfg.Prefix+"lnms/", clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("ha: reading known LNMs: %w", err)
	}
	known := map[string]api.NodeInfo{}
	for _, kv := range resp.Kvs {
		var n api.NodeInfo
		if err := json.Unmarshal(kv.Value, &n); err != nil || api.ValidLabel(n.Name) != nil {
			s.m.log.Error("ha: a damaged known-LNM record in etcd: skipped", "key", string(kv.Key), "err", err)
			continue
		}
		known[n.Name] = n
	}
	s.mu.Lock()
	s.known = known
	s.mu.Unlock()
	return nil
}

// Record implements controller.KnownStore: the LNM is in etcd before its
// registration is answered (a write only when it changed).
func (s *Store) Record(n api.NodeInfo) error {
	rec := api.NodeInfo{Name: n.Name, Address: n.Address, Recovery: n.Recovery, Driver: n.Driver}
	s.mu.Lock()
	old, ok := s.known[n.Name]
	s.mu.Unlock()
	if ok && old == rec {
		return nil
	}
	b, _ := json.Marshal(rec)
	err := s.put("lnms/"+n.Name, string(b))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err == nil {
		if s.known == nil {
			s.known = map[string]api.NodeInfo{}
		}
		s.known[n.Name] = rec
	}
	return err
}

// put writes key with the writes waiting beside it, in one guarded
// transaction of up to maxBatch, and returns once it is in etcd (or
// failed).
func (s *Store) put(key, value string) error {
	done := make(chan error, 1)
	s.wmu.Lock()
	s.pending = append(s.pending, pendingPut{key, value, done})
	start := !s.flushing
	s.flushing = true
	s.wmu.Unlock()
	if start {
		s.flush() // this caller writes for everyone waiting meanwhile
	}
	return <-done
}

// flush writes the waiting puts, batch after batch, until none wait.
func (s *Store) flush() {
	for {
		s.wmu.Lock()
		if len(s.pending) == 0 {
			s.flushing = false
			s.wmu.Unlock()
			return
		}
		n := min(len(s.pending), maxBatch)
		batch := append([]pendingPut(nil), s.pending[:n]...)
		s.pending = s.pending[n:]
		s.wmu.Unlock()
		ops := make([]clientv3.Op, 0, len(batch))
		seen := map[string]int{}
		for _, p := range batch {
			if i, ok := seen[p.key]; ok {
				ops[i] = clientv3.OpPut(s.m.cfg.Prefix+p.key, p.value) // the later write wins
				continue
			}
			seen[p.key] = len(ops)
			ops = append(ops, clientv3.OpPut(s.m.cfg.Prefix+p.key, p.value))
		}
		ctx, cancel := s.ctx()
		err := s.m.Txn(ctx, s.term, ops...)
		cancel()
		for _, p := range batch {
			p.done <- err
		}
	}
}

// List implements controller.KnownStore.
func (s *Store) List() []api.NodeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]api.NodeInfo, 0, len(s.known))
	for _, n := range s.known {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Flush implements controller.KnownStore.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Status is what `usher controller status` shows of an HA site: the
// leader, every controller campaigning (the leader first, then the
// standbys in the order they would lead), and each etcd endpoint.
type Status struct {
	Leader      Leader         `json:"leader"`
	Controllers []Leader       `json:"controllers"`
	Members     []EtcdEndpoint `json:"etcd"`
}

// EtcdEndpoint is one etcd member's health as its endpoint answers.
type EtcdEndpoint struct {
	Endpoint string `json:"endpoint"`
	OK       bool   `json:"ok"`
	Leader   bool   `json:"leader,omitempty"` // the raft leader
	Version  string `json:"version,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Health asks each etcd endpoint for its status and etcd for the leader.
func (m *Member) Health(ctx context.Context) (Status, error) {
	var st Status
	var errs []string
	for _, ep := range m.cfg.Endpoints {
		e := EtcdEndpoint{Endpoint: ep}
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := m.cli.Status(sctx, ep)
		cancel()
		if err != nil {
			e.Error = err.Error()
		} else {
			e.OK, e.Version, e.Leader = true, resp.Version, resp.Leader == resp.Header.MemberId
		}
		st.Members = append(st.Members, e)
	}
	l, err := m.CurrentLeader(ctx)
	if err != nil {
		errs = append(errs, err.Error())
	}
	st.Leader = l
	if resp, err := m.cli.Get(ctx, m.electionPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)); err == nil {
		for _, kv := range resp.Kvs {
			var c Leader
			if json.Unmarshal(kv.Value, &c) == nil {
				c.Term = kv.CreateRevision
				st.Controllers = append(st.Controllers, c)
			}
		}
	}
	if len(errs) > 0 {
		return st, errors.New(strings.Join(errs, "; "))
	}
	return st, nil
}

// Blob is one document of the replicated state under the site prefix
// (what a controller alone keeps in a file of its state directory: API
// tokens, SSH keys), written only while the term lasts.
type Blob struct {
	s   *Store
	key string
}

// Blob returns the document named name.
func (s *Store) Blob(name string) *Blob { return &Blob{s: s, key: "blobs/" + name} }

// Name is its key.
func (b *Blob) Name() string { return "etcd:" + b.s.m.cfg.Prefix + b.key }

// Read returns its content (nil, nil: none yet).
func (b *Blob) Read() ([]byte, error) {
	ctx, cancel := b.s.ctx()
	defer cancel()
	v, ok, err := b.s.m.Get(ctx, b.key)
	if err != nil || !ok {
		return nil, err
	}
	return []byte(v), nil
}

// Write replaces its content if the term still lasts.
func (b *Blob) Write(p []byte) error {
	ctx, cancel := b.s.ctx()
	defer cancel()
	return b.s.m.Put(ctx, b.s.term, b.key, string(p))
}

// Aside keeps a damaged document under another key and removes it.
func (b *Blob) Aside() (string, error) {
	old, err := b.Read()
	if err != nil {
		return "", err
	}
	aside := b.key + ".damaged-" + time.Now().UTC().Format("20060102T150405.000")
	ctx, cancel := b.s.ctx()
	defer cancel()
	p := b.s.m.cfg.Prefix
	if err := b.s.m.Txn(ctx, b.s.term, clientv3.OpPut(p+aside, string(old)), clientv3.OpDelete(p+b.key)); err != nil {
		return "", err
	}
	return "etcd:" + p + aside, nil
}

// TicketKeys is where the leaders of a site keep their TLS session ticket
// keys (a transport.TicketStore): every controller that leads uses the
// same keys, so the LNMs and clients that move to a new leader resume
// their TLS sessions instead of full handshakes, as after a restart.
// Whoever reads them can open the site's session tickets: they are as
// secret as the controllers' private keys (etcd is reachable by
// controller certificates only, see usher etcd --allowed-cn).
func (s *Store) TicketKeys() TicketKeys { return TicketKeys{b: s.Blob("tls-ticket-keys")} }

// TicketKeys is the ticket keys' document in etcd.
type TicketKeys struct{ b *Blob }

type ticketDoc struct {
	Written time.Time `json:"written"`
	Keys    []byte    `json:"keys"`
}

// Load returns the keys and when they were written (nil: none yet).
func (t TicketKeys) Load() ([]byte, time.Time, error) {
	b, err := t.b.Read()
	if err != nil || b == nil {
		return nil, time.Time{}, err
	}
	var d ticketDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, time.Time{}, nil // damaged: new keys replace it
	}
	return d.Keys, d.Written, nil
}

// Save writes the keys if the term lasts.
func (t TicketKeys) Save(keys []byte) error {
	b, _ := json.Marshal(ticketDoc{Written: time.Now(), Keys: keys})
	return t.b.Write(b)
}
