package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KV is the policies' store (usher.store) in etcd for highly available
// controllers: every key is store/<key> under the site prefix, its value
// {"v": <JSON>, "o": owner script, "e": expiry in Unix ms or 0}. It has
// the semantics of the SQLite store (lua.KV): an expired key reads as
// absent; compare-and-set and increments are etcd transactions on the
// key's revision; each script's share is bounded. Every write is guarded
// by the leader's term, so a deposed leader's scripts write nothing.
type KV struct {
	s                *Store
	maxKey, maxValue int
	maxTotal         int64
	mu               sync.Mutex
	used             map[string]int64 // bytes each script stores (as of this term's writes and the first read)
	counted          bool
	writes           int
}

// KV returns the policies' store of this term with the given bounds
// (0: the SQLite store's defaults).
func (s *Store) KV(maxKey, maxValue int, maxTotal int64) *KV {
	if maxKey <= 0 {
		maxKey = 256
	}
	if maxValue <= 0 {
		maxValue = 64 << 10
	}
	if maxTotal <= 0 {
		maxTotal = 64 << 20
	}
	return &KV{s: s, maxKey: maxKey, maxValue: maxValue, maxTotal: maxTotal, used: map[string]int64{}}
}

type kvRec struct {
	V json.RawMessage `json:"v"`
	O string          `json:"o"`
	E int64           `json:"e,omitempty"`
}

func (k *KV) key(name string) string { return k.s.m.cfg.Prefix + "store/" + name }

func (k *KV) check(name string) error {
	if name == "" || len(name) > k.maxKey {
		return fmt.Errorf("key of %d bytes (1 to %d)", len(name), k.maxKey)
	}
	return nil
}

func (k *KV) encode(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > k.maxValue {
		return nil, fmt.Errorf("value of %d bytes exceeds %d", len(b), k.maxValue)
	}
	return b, nil
}

// read is the record of name (nil if absent or expired) and the key's
// modification revision (0 if absent).
func (k *KV) read(ctx context.Context, name string) (*kvRec, int64, int64, error) {
	resp, err := k.s.m.cli.Get(ctx, k.key(name))
	if err != nil {
		return nil, 0, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, 0, nil
	}
	kv := resp.Kvs[0]
	var r kvRec
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return nil, kv.ModRevision, int64(len(kv.Key) + len(kv.Value)), fmt.Errorf("stored value of %q: %w", name, err)
	}
	size := int64(len(name) + len(r.V))
	if r.E != 0 && r.E <= time.Now().UnixMilli() {
		return nil, kv.ModRevision, size, nil
	}
	return &r, kv.ModRevision, size, nil
}

// count reads every script's share once per term.
func (k *KV) countLocked(ctx context.Context) error {
	if k.counted {
		return nil
	}
	resp, err := k.s.m.cli.Get(ctx, k.key(""), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range resp.Kvs {
		var r kvRec
		if json.Unmarshal(kv.Value, &r) == nil {
			k.used[r.O] += int64(len(kv.Key) - len(k.key("")) + len(r.V))
		}
	}
	k.counted = true
	return nil
}

// write puts rec (nil: deletes) under name if the key is still at rev
// (0: absent) and the term lasts; it keeps owners' shares.
func (k *KV) write(ctx context.Context, owner, name string, rec *kvRec, rev, prevSize int64, prevOwner string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.countLocked(ctx); err != nil {
		return false, err
	}
	size := int64(0)
	if rec != nil {
		size = int64(len(name) + len(rec.V))
		mine := k.used[owner] + size
		if prevOwner == owner {
			mine -= prevSize
		}
		if mine > k.maxTotal && mine > k.used[owner] {
			return false, fmt.Errorf("the store is full for %s (%d of %d bytes)", owner, k.used[owner], k.maxTotal)
		}
	}
	cmp, leaderKey, err := k.s.m.guardKey(k.s.term)
	if err != nil {
		return false, err
	}
	cond := clientv3.Compare(clientv3.ModRevision(k.key(name)), "=", rev)
	var op clientv3.Op
	if rec == nil {
		op = clientv3.OpDelete(k.key(name))
	} else {
		b, _ := json.Marshal(rec)
		op = clientv3.OpPut(k.key(name), string(b))
	}
	resp, err := k.s.m.cli.Txn(ctx).If(cmp, cond).Then(op).Else(clientv3.OpGet(leaderKey)).Commit()
	if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	if !resp.Succeeded {
		// Either the key moved (the caller reads again) or the term ended.
		if len(resp.Responses) > 0 {
			if r := resp.Responses[0].GetResponseRange(); r != nil && (len(r.Kvs) == 0 || r.Kvs[0].CreateRevision != k.s.term) {
				return false, ErrNotLeader
			}
		}
		return false, nil
	}
	if prevSize > 0 {
		k.used[prevOwner] -= prevSize
	}
	k.used[owner] += size
	k.writes++
	return true, nil
}

func (k *KV) expiry(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return time.Now().Add(ttl).UnixMilli()
}

// update applies f to name's current value until its write lands on the
// revision it read (concurrent writers retry).
func (k *KV) update(owner, name string, f func(cur *kvRec) (next *kvRec, write bool, err error)) error {
	if err := k.check(name); err != nil {
		return err
	}
	ctx, cancel := k.s.ctx()
	defer cancel()
	for range 64 {
		cur, rev, size, err := k.read(ctx, name)
		if err != nil {
			return err
		}
		next, write, err := f(cur)
		if err != nil || !write {
			return err
		}
		prevOwner := ""
		if cur != nil {
			prevOwner = cur.O
		} else if rev != 0 {
			prevOwner = owner // an expired record: its owner is not known here; counted as the writer's
		}
		ok, err := k.write(ctx, owner, name, next, rev, size, prevOwner)
		if err != nil || ok {
			return err
		}
	}
	return errors.New("store: too much contention on one key")
}

// Get implements lua.KV.
func (k *KV) Get(name string) (any, error) {
	ctx, cancel := k.s.ctx()
	defer cancel()
	r, _, _, err := k.read(ctx, name)
	if err != nil || r == nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(r.V, &v); err != nil {
		return nil, fmt.Errorf("stored value of %q: %w", name, err)
	}
	return v, nil
}

// Set implements lua.KV.
func (k *KV) Set(owner, name string, v any, ttl time.Duration) error {
	if v == nil {
		return k.Delete(owner, name)
	}
	raw, err := k.encode(v)
	if err != nil {
		return err
	}
	return k.update(owner, name, func(*kvRec) (*kvRec, bool, error) {
		return &kvRec{V: raw, O: owner, E: k.expiry(ttl)}, true, nil
	})
}

// Delete implements lua.KV.
func (k *KV) Delete(owner, name string) error {
	return k.update(owner, name, func(cur *kvRec) (*kvRec, bool, error) { return nil, true, nil })
}

// CAS implements lua.KV.
func (k *KV) CAS(owner, name string, old, v any, ttl time.Duration) (bool, error) {
	var want json.RawMessage
	if old != nil {
		var err error
		if want, err = k.encode(old); err != nil {
			return false, err
		}
	}
	var raw json.RawMessage
	if v != nil {
		var err error
		if raw, err = k.encode(v); err != nil {
			return false, err
		}
	}
	swapped := false
	err := k.update(owner, name, func(cur *kvRec) (*kvRec, bool, error) {
		swapped = false
		have := ""
		if cur != nil {
			have = compact(cur.V)
		}
		if have != compact(want) {
			return nil, false, nil
		}
		swapped = true
		if v == nil {
			return nil, true, nil
		}
		return &kvRec{V: raw, O: owner, E: k.expiry(ttl)}, true, nil
	})
	return swapped && err == nil, err
}

func compact(b json.RawMessage) string {
	if len(b) == 0 {
		return ""
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// Incr implements lua.KV.
func (k *KV) Incr(owner, name string, delta float64) (float64, error) {
	var sum float64
	err := k.update(owner, name, func(cur *kvRec) (*kvRec, bool, error) {
		var n float64
		exp := int64(0)
		if cur != nil {
			if err := json.Unmarshal(cur.V, &n); err != nil {
				return nil, false, fmt.Errorf("%q holds no number", name)
			}
			exp = cur.E
		}
		sum = n + delta
		raw, _ := json.Marshal(sum)
		return &kvRec{V: raw, O: owner, E: exp}, true, nil
	})
	return sum, err
}

// List implements lua.KV: keys with prefix after the key after, in key
// order, at most limit (expired ones skipped).
func (k *KV) List(prefix, after string, limit int) ([]string, []any, error) {
	ctx, cancel := k.s.ctx()
	defer cancel()
	base := k.key("")
	from := k.key(prefix)
	if after != "" && after >= prefix {
		from = k.key(after) + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(k.key(prefix))
	now := time.Now().UnixMilli()
	var keys []string
	var vals []any
	for len(keys) < limit {
		resp, err := k.s.m.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(int64(limit-len(keys))),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, nil, err
		}
		for _, kv := range resp.Kvs {
			var r kvRec
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				return nil, nil, fmt.Errorf("stored value of %q: %w", kv.Key, err)
			}
			if r.E != 0 && r.E <= now {
				continue
			}
			var v any
			if err := json.Unmarshal(r.V, &v); err != nil {
				return nil, nil, err
			}
			keys, vals = append(keys, string(kv.Key[len(base):])), append(vals, v)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return keys, vals, nil
}

// Close implements lua.KV (the member owns the connection).
func (k *KV) Close() error { return nil }
