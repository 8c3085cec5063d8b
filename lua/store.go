package lua

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite
)

// KV is where usher.store keeps its data: by default an SQLite file in the
// state directory (kvStore); for highly available controllers, etcd
// (package ha), so every controller that leads sees the same store.
// Values are plain JSON data; owner is the script that writes (its share
// of the store is bounded); a key with a TTL expires.
type KV interface {
	Get(k string) (any, error)
	Set(owner, k string, v any, ttl time.Duration) error
	Delete(owner, k string) error
	CAS(owner, k string, old, v any, ttl time.Duration) (bool, error)
	Incr(owner, k string, delta float64) (float64, error)
	List(prefix, after string, limit int) ([]string, []any, error)
	Close() error
}

// Get implements KV.
func (s *kvStore) Get(k string) (any, error) { return s.get(k) }

// Set implements KV.
func (s *kvStore) Set(owner, k string, v any, ttl time.Duration) error {
	return s.set(owner, k, v, ttl)
}

// Delete implements KV.
func (s *kvStore) Delete(owner, k string) error { return s.delete(owner, k) }

// CAS implements KV.
func (s *kvStore) CAS(owner, k string, old, v any, ttl time.Duration) (bool, error) {
	return s.cas(owner, k, old, v, ttl)
}

// Incr implements KV.
func (s *kvStore) Incr(owner, k string, delta float64) (float64, error) {
	return s.incr(owner, k, delta)
}

// List implements KV.
func (s *kvStore) List(prefix, after string, limit int) ([]string, []any, error) {
	return s.list(prefix, after, limit)
}

// Close implements KV.
func (s *kvStore) Close() error { return s.close() }

// kvStore is the persistent key-value store behind usher.store: one row
// per key in an embedded SQLite database (WAL mode), so a write costs its
// row, not the whole store, and readers never wait for a writer. Values
// are plain JSON data (strings, numbers, bools, nested tables). Keys,
// values and each script's share of the store are bounded (StoreLimits):
// a row counts against the script that last wrote it, so one script
// filling its share does not stop another's writes. A key may expire.
type kvStore struct {
	db     *sql.DB
	limits StoreLimits
	bytes  atomic.Int64 // keys and values stored, kept by every write
	writes atomic.Uint64
	mu     sync.Mutex        // serializes writes (the size check and the write are one step); guards used
	used   map[string]int64  // bytes stored by each script
	hook   func(string, any) // test hook, called after each set
}

// StoreLimits bound usher.store.
type StoreLimits struct {
	MaxKey   int   // bytes of a key (default 256)
	MaxValue int   // bytes of a value, JSON-encoded (default 64 KiB)
	MaxTotal int64 // bytes of keys and values one script may store (default 64 MiB)
}

func (l StoreLimits) withDefaults() StoreLimits {
	if l.MaxKey <= 0 {
		l.MaxKey = 256
	}
	if l.MaxValue <= 0 {
		l.MaxValue = 64 << 10
	}
	if l.MaxTotal <= 0 {
		l.MaxTotal = 64 << 20
	}
	return l
}

const storeSchema = `CREATE TABLE IF NOT EXISTS kv (
	k TEXT PRIMARY KEY,
	v TEXT NOT NULL,
	expires INTEGER NOT NULL DEFAULT 0,
	owner TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID`

// openStore opens (or creates) the store at path ("" = in memory). A
// database that does not open or fails SQLite's quick check is moved aside
// with a loud log line, and the store starts empty.
func openStore(path string, limits StoreLimits, log *slog.Logger) (*kvStore, error) {
	s, err := tryOpenStore(path, limits)
	if err != nil && path != "" {
		aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405.000"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("policy store %s is damaged (%v) and could not be moved aside: %w", path, err, rerr)
		}
		os.Remove(path + "-wal")
		os.Remove(path + "-shm")
		log.Error("policy store damaged: moved aside, starting with an empty store", "file", path, "moved_to", aside, "err", err)
		s, err = tryOpenStore(path, limits)
	}
	return s, err
}

func tryOpenStore(path string, limits StoreLimits) (*kvStore, error) {
	if path != "" {
		// SQLite takes a file too short for a header for an empty
		// database and overwrites it: a damaged file must be seen first.
		if f, err := os.Open(path); err == nil {
			head := make([]byte, 16)
			n, _ := io.ReadFull(f, head)
			f.Close()
			if n > 0 && !bytes.Equal(head[:n], []byte("SQLite format 3\x00")[:n]) || n > 0 && n < 16 {
				return nil, fmt.Errorf("policy store %s: not a SQLite database", path)
			}
		}
	}
	dsn := "file::memory:?_pragma=busy_timeout(5000)"
	if path != "" {
		dsn = "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("policy store: %w", err)
	}
	if path == "" {
		db.SetMaxOpenConns(1) // one in-memory database, not one per connection
	} else {
		db.SetMaxOpenConns(4)
	}
	s := &kvStore{db: db, limits: limits.withDefaults(), used: map[string]int64{}}
	fail := func(err error) (*kvStore, error) {
		db.Close()
		return nil, fmt.Errorf("policy store %s: %w", path, err)
	}
	var check string
	if err := db.QueryRow("PRAGMA quick_check").Scan(&check); err != nil {
		return fail(err)
	}
	if check != "ok" {
		return fail(fmt.Errorf("quick check: %s", check))
	}
	if _, err := db.Exec(storeSchema); err != nil {
		return fail(err)
	}
	if err := s.recount(); err != nil {
		return fail(err)
	}
	return s, nil
}

// recount reads what each script stores (at open, and now and then to
// drop expired rows from the figures).
func (s *kvStore) recount() error {
	rows, err := s.db.Query("SELECT owner, SUM(length(k) + length(v)) FROM kv GROUP BY owner")
	if err != nil {
		return err
	}
	defer rows.Close()
	used := map[string]int64{}
	var total int64
	for rows.Next() {
		var o string
		var n int64
		if err := rows.Scan(&o, &n); err != nil {
			return err
		}
		used[o], total = n, total+n
	}
	s.used = used
	s.bytes.Store(total)
	return rows.Err()
}

func (s *kvStore) close() error { return s.db.Close() }

func nowMS() int64 { return time.Now().UnixMilli() }

func (s *kvStore) checkKey(k string) error {
	if k == "" || len(k) > s.limits.MaxKey {
		return fmt.Errorf("key of %d bytes (1 to %d)", len(k), s.limits.MaxKey)
	}
	return nil
}

// get returns the value of k (nil if absent or expired).
func (s *kvStore) get(k string) (any, error) {
	var raw string
	err := s.db.QueryRow("SELECT v FROM kv WHERE k = ? AND (expires = 0 OR expires > ?)", k, nowMS()).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return nil, fmt.Errorf("stored value of %q: %w", k, err)
	}
	return v, nil
}

func (s *kvStore) encode(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if len(b) > s.limits.MaxValue {
		return "", fmt.Errorf("value of %d bytes exceeds %d", len(b), s.limits.MaxValue)
	}
	return string(b), nil
}

// writeTx runs f in a write transaction for script owner: f returns the
// bytes the row now takes and the owner and size of what it replaced;
// owner's share is checked before the commit.
func (s *kvStore) writeTx(owner string, f func(tx *sql.Tx) (size int64, prev row, err error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	size, prev, err := f(tx)
	if err != nil {
		return err
	}
	mine := s.used[owner] + size
	if prev.owner == owner {
		mine -= prev.size
	}
	if size > 0 && mine > s.limits.MaxTotal && mine > s.used[owner] {
		return fmt.Errorf("the store is full for %s (%d of %d bytes)", owner, s.used[owner], s.limits.MaxTotal)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if prev.size > 0 {
		s.used[prev.owner] -= prev.size
	}
	s.used[owner] += size
	s.bytes.Add(size - prev.size)
	if s.writes.Add(1)%1024 == 0 {
		s.db.Exec("DELETE FROM kv WHERE expires != 0 AND expires <= ?", nowMS())
		s.recount()
	}
	return nil
}

// row is what a write replaced.
type row struct {
	owner string
	size  int64
}

// oldRow is the owner and stored size of k's row (zero if none).
func oldRow(tx *sql.Tx, k string) (row, error) {
	var r row
	err := tx.QueryRow("SELECT owner, length(k) + length(v) FROM kv WHERE k = ?", k).Scan(&r.owner, &r.size)
	if errors.Is(err, sql.ErrNoRows) {
		return row{}, nil
	}
	return r, err
}

const upsert = "INSERT INTO kv(k, v, expires, owner) VALUES(?, ?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, expires = excluded.expires, owner = excluded.owner"

// set stores v under k for script owner (nil deletes), expiring after
// ttl (0: never).
func (s *kvStore) set(owner, k string, v any, ttl time.Duration) error {
	if err := s.checkKey(k); err != nil {
		return err
	}
	if v == nil {
		return s.delete(owner, k)
	}
	raw, err := s.encode(v)
	if err != nil {
		return err
	}
	var expires int64
	if ttl > 0 {
		expires = nowMS() + ttl.Milliseconds()
	}
	err = s.writeTx(owner, func(tx *sql.Tx) (int64, row, error) {
		prev, err := oldRow(tx, k)
		if err != nil {
			return 0, prev, err
		}
		if _, err := tx.Exec(upsert, k, raw, expires, owner); err != nil {
			return 0, prev, err
		}
		return int64(len(k) + len(raw)), prev, nil
	})
	if err == nil && s.hook != nil {
		s.hook(k, v)
	}
	return err
}

// delete removes k.
func (s *kvStore) delete(owner, k string) error {
	return s.writeTx(owner, func(tx *sql.Tx) (int64, row, error) {
		prev, err := oldRow(tx, k)
		if err != nil || prev.size == 0 {
			return 0, prev, err
		}
		_, err = tx.Exec("DELETE FROM kv WHERE k = ?", k)
		return 0, prev, err
	})
}

// cas sets k to v if its value is old (nil: absent); it reports whether it
// did.
func (s *kvStore) cas(owner, k string, old, v any, ttl time.Duration) (bool, error) {
	if err := s.checkKey(k); err != nil {
		return false, err
	}
	want := ""
	if old != nil {
		var err error
		if want, err = s.encode(old); err != nil {
			return false, err
		}
	}
	raw := ""
	if v != nil {
		var err error
		if raw, err = s.encode(v); err != nil {
			return false, err
		}
	}
	var expires int64
	if ttl > 0 {
		expires = nowMS() + ttl.Milliseconds()
	}
	swapped := false
	err := s.writeTx(owner, func(tx *sql.Tx) (int64, row, error) {
		prev, err := oldRow(tx, k)
		if err != nil {
			return 0, prev, err
		}
		var cur string
		err = tx.QueryRow("SELECT v FROM kv WHERE k = ? AND (expires = 0 OR expires > ?)", k, nowMS()).Scan(&cur)
		if errors.Is(err, sql.ErrNoRows) {
			cur, err = "", nil
		}
		if err != nil || cur != want {
			return prev.size, row{owner: owner, size: prev.size}, err // unchanged
		}
		swapped = true
		if v == nil {
			_, err = tx.Exec("DELETE FROM kv WHERE k = ?", k)
			return 0, prev, err
		}
		_, err = tx.Exec(upsert, k, raw, expires, owner)
		return int64(len(k) + len(raw)), prev, err
	})
	return swapped && err == nil, err
}

// incr adds delta to the number under k (absent: 0) and returns the sum.
func (s *kvStore) incr(owner, k string, delta float64) (float64, error) {
	if err := s.checkKey(k); err != nil {
		return 0, err
	}
	var sum float64
	err := s.writeTx(owner, func(tx *sql.Tx) (int64, row, error) {
		prev, err := oldRow(tx, k)
		if err != nil {
			return 0, prev, err
		}
		var cur string
		var expires int64
		err = tx.QueryRow("SELECT v, expires FROM kv WHERE k = ? AND (expires = 0 OR expires > ?)", k, nowMS()).Scan(&cur, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			cur, err = "0", nil
		}
		if err != nil {
			return 0, prev, err
		}
		var n float64
		if err := json.Unmarshal([]byte(cur), &n); err != nil {
			return 0, prev, fmt.Errorf("%q holds no number", k)
		}
		sum = n + delta
		raw, _ := json.Marshal(sum)
		_, err = tx.Exec(upsert, k, string(raw), expires, owner)
		return int64(len(k) + len(raw)), prev, err
	})
	return sum, err
}

// list returns the keys with prefix (after the key after, at most limit)
// and their values, in key order.
func (s *kvStore) list(prefix, after string, limit int) ([]string, []any, error) {
	// Keys from prefix up to the next prefix: an index range, not a scan.
	hi := prefix + "\U0010FFFF"
	lo := prefix
	if after > lo {
		lo = after
	}
	rows, err := s.db.QueryContext(context.Background(),
		"SELECT k, v FROM kv WHERE k >= ? AND k < ? AND k != ? AND (expires = 0 OR expires > ?) ORDER BY k LIMIT ?",
		lo, hi, after, nowMS(), limit)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var keys []string
	var vals []any
	for rows.Next() {
		var k, raw string
		if err := rows.Scan(&k, &raw); err != nil {
			return nil, nil, err
		}
		var v any
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			return nil, nil, fmt.Errorf("stored value of %q: %w", k, err)
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	return keys, vals, rows.Err()
}

// size is the bytes of keys and values stored.
func (s *kvStore) size() int64 { return s.bytes.Load() }
