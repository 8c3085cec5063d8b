package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/usher-vm/usher/core"
)

// Announcement is the controller's recovery message to a known LNM: "I am
// back, reconnect to me at Controller".
type Announcement struct {
	Controller string `json:"controller"` // address to connect to
	ID         string `json:"id"`         // controller instance id
}

// RecoveryServerTLS is the LNM's TLS configuration for its recovery
// listener: its own node certificate, and only peers holding the site's
// controller certificate are accepted.
func RecoveryServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pair, pool, err := loadIdentity(certFile, keyFile, caFile, "LNM")
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || CertRole(cs.PeerCertificates[0]) != RoleController {
				return errors.New("recovery announcements are accepted from the controller only")
			}
			return nil
		},
	}, nil
}

// AnnounceTLS is the controller's TLS configuration for announcing itself
// to LNMs: it presents the controller certificate and accepts only LNM
// certificates of the site.
func AnnounceTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pair, pool, err := loadIdentity(certFile, keyFile, caFile, "controller")
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{pair},
		RootCAs:            pool,
		InsecureSkipVerify: true, // LNMs are addressed by IP; the chain and role are verified below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("LNM presented no certificate")
			}
			opts := x509VerifyOpts(pool, cs)
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("LNM certificate: %w", err)
			}
			if CertRole(cs.PeerCertificates[0]) != RoleLNM {
				return errors.New("peer is not an LNM")
			}
			return nil
		},
	}, nil
}

// ServeRecovery accepts recovery announcements on ln until ctx ends,
// calling f for each (from the accepting goroutine; keep it short).
func ServeRecovery(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, log *slog.Logger, f func(Announcement)) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(5 * time.Second))
			conn := tls.Server(raw, tlsCfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				log.Debug("recovery handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
				return
			}
			env, err := ReadEnvelope(conn, 1<<16)
			if err != nil || env.Method != "recover" {
				return
			}
			var a Announcement
			if json.Unmarshal(env.Args, &a) != nil {
				return
			}
			WriteEnvelope(conn, &Envelope{Result: json.RawMessage(`{}`)})
			f(a)
		}()
	}
}

// Announce tells the LNM listening at addr that the controller is back.
func Announce(ctx context.Context, addr string, tlsCfg *tls.Config, a Announcement) error {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: tlsCfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("announcing to %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := json.Marshal(a)
	if err := WriteEnvelope(c, &Envelope{Method: "recover", Args: b}); err != nil {
		return fmt.Errorf("announcing to %s: %w", addr, err)
	}
	if _, err := ReadEnvelope(c, 1<<16); err != nil {
		return fmt.Errorf("announcing to %s: no acknowledgement: %w", addr, err)
	}
	return nil
}

// KnownLNMs is the controller's only persistent state: the LNMs it has
// seen, so a restarted controller can announce itself to them. The file is
// rewritten atomically (temp file + fsync + rename).
type KnownLNMs struct {
	path     string
	mu       sync.Mutex
	cond     *sync.Cond
	m        map[string]core.NodeInfo
	seq      uint64 // changes made
	written  uint64 // changes on disk
	flushing bool
	lastErr  error
}

// LoadKnownLNMs reads the file (a missing file is an empty list).
func LoadKnownLNMs(path string) (*KnownLNMs, error) {
	k := &KnownLNMs{path: path, m: map[string]core.NodeInfo{}}
	k.cond = sync.NewCond(&k.mu)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading known LNMs: %w", err)
	}
	var list []core.NodeInfo
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("reading known LNMs %s: %w", path, err)
	}
	for _, n := range list {
		k.m[n.Name] = n
	}
	return k, nil
}

// List returns the known LNMs sorted by name.
func (k *KnownLNMs) List() []core.NodeInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.listLocked()
}

func (k *KnownLNMs) listLocked() []core.NodeInfo {
	out := make([]core.NodeInfo, 0, len(k.m))
	for _, n := range k.m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Record adds or updates an LNM and returns once the file holds it.
// Concurrent calls share one write (group commit), so thousands of LNMs
// registering at once cost a few writes, not one each.
func (k *KnownLNMs) Record(n core.NodeInfo) error {
	k.mu.Lock()
	old, ok := k.m[n.Name]
	if ok && old.Address == n.Address && old.Recovery == n.Recovery {
		k.mu.Unlock()
		return nil
	}
	k.m[n.Name] = core.NodeInfo{Name: n.Name, Address: n.Address, Recovery: n.Recovery, Driver: n.Driver}
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

func (k *KnownLNMs) write(list []core.NodeInfo) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(k.path, b, 0o600); err != nil {
		return fmt.Errorf("saving known LNMs: %w", err)
	}
	return nil
}

func x509VerifyOpts(pool *x509.CertPool, cs tls.ConnectionState) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
}
