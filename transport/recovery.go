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
	"sync"
	"time"
)

// Announcement is the controller's recovery message to a known LNM: "I am
// back, reconnect to me at Controller".
type Announcement struct {
	Controller string `json:"controller"`     // address to connect to
	ID         string `json:"id"`             // controller instance id
	Term       int64  `json:"term,omitempty"` // its leadership term (highly available controllers)
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
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
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
			if json.Unmarshal(env.Args, &a) != nil || len(a.Controller) > 512 || len(a.ID) > 128 {
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

func x509VerifyOpts(pool *x509.CertPool, cs tls.ConnectionState) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
}
