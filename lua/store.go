package lua

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/renameio/v2"
)

// kvStore is the persistent key-value store behind usher.store. Values are
// plain JSON data (strings, numbers, bools, flat tables). With a path,
// every set rewrites the file atomically (temp file in the same directory,
// fsync, rename).
type kvStore struct {
	mu   sync.Mutex
	path string
	m    map[string]any
	hook func(k string, v any) // test hook, called after each set
}

// maxStoreValue bounds one stored value (encoded).
const maxStoreValue = 64 << 10

func openStore(path string) (*kvStore, error) {
	s := &kvStore{path: path, m: map[string]any{}}
	if path == "" {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lua store: %w", err)
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &s.m); err != nil {
			return nil, fmt.Errorf("lua store %s: %w", path, err)
		}
	}
	return s, nil
}

func (s *kvStore) get(k string) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[k]
}

func (s *kvStore) set(k string, v any) error {
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if len(b) > maxStoreValue {
			return fmt.Errorf("value of %d bytes exceeds %d", len(b), maxStoreValue)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v == nil {
		delete(s.m, k)
	} else {
		s.m[k] = v
	}
	if s.hook != nil {
		s.hook(k, v)
	}
	return s.writeLocked()
}

func (s *kvStore) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeLocked()
}

func (s *kvStore) writeLocked() error {
	if s.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(s.m, "", " ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(s.path, b, 0o600)
}
