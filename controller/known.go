package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/google/renameio/v2"
	"github.com/usher-vm/usher/api"
)

// KnownStore keeps the LNMs a controller has seen: a file (KnownLNMs) or,
// for highly available controllers, etcd (package ha).
type KnownStore interface {
	// Record adds or updates an LNM, returning once it is durable.
	Record(api.NodeInfo) error
	// List returns the known LNMs sorted by name.
	List() []api.NodeInfo
	// Flush returns the error of the last write.
	Flush() error
}

var _ KnownStore = (*KnownLNMs)(nil)

// KnownLNMs is the controller's only persistent state: the LNMs it has
// seen, so a restarted controller can announce itself to them. The file is
// rewritten atomically (temp file + fsync + rename).
type KnownLNMs struct {
	path     string
	mu       sync.Mutex
	cond     *sync.Cond
	m        map[string]api.NodeInfo
	seq      uint64 // changes made
	written  uint64 // changes on disk
	flushing bool
	lastErr  error
}

// LoadKnownLNMs reads the file (a missing file is an empty list). A
// damaged file is moved aside (to PATH.damaged-TIME) with a loud log line
// and the list starts empty: the controller starts, and LNMs re-register
// on their own (they retry with backoff); only the recovery announcement
// to them is lost.
func LoadKnownLNMs(path string, log *slog.Logger) (*KnownLNMs, error) {
	k := &KnownLNMs{path: path, m: map[string]api.NodeInfo{}}
	k.cond = sync.NewCond(&k.mu)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading known LNMs: %w", err)
	}
	var list []api.NodeInfo
	err = json.Unmarshal(b, &list)
	for _, n := range list {
		if err == nil && api.ValidLabel(n.Name) != nil {
			err = fmt.Errorf("LNM name %q: %v", n.Name, api.ValidLabel(n.Name))
		}
	}
	if err != nil {
		aside, merr := MoveAside(path)
		if merr != nil {
			return nil, fmt.Errorf("known LNMs %s is damaged (%v) and could not be moved aside: %w", path, err, merr)
		}
		log.Error("known LNMs file damaged: moved aside, starting with no known LNMs (they re-register on their own)",
			"file", path, "moved_to", aside, "err", err)
		return k, nil
	}
	for _, n := range list {
		k.m[n.Name] = n
	}
	return k, nil
}

// MoveAside renames a damaged state file to PATH.damaged-TIME and returns
// the new name.
func MoveAside(path string) (string, error) {
	aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405.000"))
	return aside, os.Rename(path, aside)
}

// List returns the known LNMs sorted by name.
func (k *KnownLNMs) List() []api.NodeInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.listLocked()
}

func (k *KnownLNMs) listLocked() []api.NodeInfo {
	out := make([]api.NodeInfo, 0, len(k.m))
	for _, n := range k.m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Record adds or updates an LNM and returns once the file holds it.
// Concurrent calls share one write (group commit), so thousands of LNMs
// registering at once cost a few writes, not one each.
func (k *KnownLNMs) Record(n api.NodeInfo) error {
	k.mu.Lock()
	old, ok := k.m[n.Name]
	if ok && old.Address == n.Address && old.Recovery == n.Recovery {
		k.mu.Unlock()
		return nil
	}
	k.m[n.Name] = api.NodeInfo{Name: n.Name, Address: n.Address, Recovery: n.Recovery, Driver: n.Driver}
	k.seq++
	mine := k.seq
	if !k.flushing {
		k.flushing = true
		go k.flushLoop()
	}
	for k.written < mine {
		k.cond.Wait()
	}
	err := k.lastErr
	k.mu.Unlock()
	return err
}

func (k *KnownLNMs) flushLoop() {
	k.mu.Lock()
	for k.written < k.seq {
		target := k.seq
		list := k.listLocked()
		k.mu.Unlock()
		err := k.write(list)
		k.mu.Lock()
		k.written, k.lastErr = target, err
		k.cond.Broadcast()
	}
	k.flushing = false
	k.mu.Unlock()
}

// Flush returns the error of the last write (Record returns only once its
// change is on disk, so there is nothing left to write).
func (k *KnownLNMs) Flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastErr
}

func (k *KnownLNMs) write(list []api.NodeInfo) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(k.path, b, 0o600); err != nil {
		return fmt.Errorf("saving known LNMs: %w", err)
	}
	return nil
}
