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

// UseTicketKeys loads the ticket keys kept at path, creating or rotating
// them as needed, and sets them on cfg: the first issues tickets, the
// second (the previous one) still opens them.
func UseTicketKeys(cfg *tls.Config, path string) error {
	keys, err := ticketKeys(path, time.Now())
	if err != nil {
		return fmt.Errorf("TLS session ticket keys %s: %w", path, err)
	}
	cfg.SetSessionTicketKeys(keys)
	return nil
}

func ticketKeys(path string, now time.Time) ([][32]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var keys [][32]byte
	if len(b)%32 == 0 {
		for i := 0; i+32 <= len(b) && len(keys) < 2; i += 32 {
			keys = append(keys, [32]byte(b[i:i+32]))
		}
	}
	fresh := len(keys) > 0
	if fresh {
		if st, err := os.Stat(path); err != nil || now.Sub(st.ModTime()) >= TicketRotation {
			fresh = false
		}
	}
	if fresh {
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
	return keys, renameio.WriteFile(path, out, 0o600)
}
