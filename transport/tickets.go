package transport

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/renameio/v2"
)

// Session tickets that survive a restart. A controller that restarts
// (after a crash, or an upgrade) is reconnected to by every LNM and client
// of the site at once; with the ticket keys of the process before it, each
// of those connections resumes its TLS session instead of a full
// handshake: no certificate signature or chain verification on either
// side, only the key exchange (which keeps forward secrecy). The keys live
// in a file readable by the controller alone: whoever reads it can open
// the tickets of the last two rotation periods, so it is as secret as the
// controller's private key next to it.

// TicketRotation is how long one ticket key issues tickets; tickets of the
// key before it are still accepted.
const TicketRotation = 24 * time.Hour

// TicketStore keeps the ticket keys: a file (TicketFile) of a controller
// alone or, for highly available controllers, a document all of them
// read, so that connections moving to a new leader resume too.
type TicketStore interface {
	// Load returns the stored keys and when they were written (nil: none).
	Load() (keys []byte, written time.Time, err error)
	Save(keys []byte) error
}

// TicketFile is a TicketStore in a file (its modification time is when
// the keys were written).
type TicketFile string

// Load implements TicketStore.
func (f TicketFile) Load() ([]byte, time.Time, error) {
	b, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	st, err := os.Stat(string(f))
	if err != nil {
		return nil, time.Time{}, err
	}
	return b, st.ModTime(), nil
}

// Save implements TicketStore.
func (f TicketFile) Save(b []byte) error { return renameio.WriteFile(string(f), b, 0o600) }

// UseTicketKeys loads the ticket keys kept at path, creating or rotating
// them as needed, and sets them on cfg: the first issues tickets, the
// second (the previous one) still opens them.
func UseTicketKeys(cfg *tls.Config, path string) error {
	return UseTicketKeysIn(cfg, TicketFile(path))
}

// UseTicketKeysIn is UseTicketKeys with the keys kept in st.
func UseTicketKeysIn(cfg *tls.Config, st TicketStore) error {
	keys, err := ticketKeys(st, time.Now())
	if err != nil {
		return fmt.Errorf("TLS session ticket keys: %w", err)
	}
	cfg.SetSessionTicketKeys(keys)
	return nil
}

func ticketKeys(st TicketStore, now time.Time) ([][32]byte, error) {
	b, written, err := st.Load()
	if err != nil {
		return nil, err
	}
	var keys [][32]byte
	if len(b)%32 == 0 {
		for i := 0; i+32 <= len(b) && len(keys) < 2; i += 32 {
			keys = append(keys, [32]byte(b[i:i+32]))
		}
	}
	if len(keys) > 0 && now.Sub(written) < TicketRotation {
		return keys, nil
	}
	// A new key issues tickets from now on; the current one still opens
	// those it issued.
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	keys = append([][32]byte{k}, keys...)[:min(2, len(keys)+1)]
	out := make([]byte, 0, 64)
	for _, k := range keys {
		out = append(out, k[:]...)
	}
	return keys, st.Save(out)
}
