package transport

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSessionsResumeAfterRestart: a controller that restarts with the
// ticket keys it kept resumes the TLS sessions of the LNMs that reconnect
// (no full handshake), and still knows which node each is; with other
// keys it makes full handshakes. The key file is private and rotates.
func TestSessionsResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ca, err := CreateCA(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctlCert, ctlKey, err := ca.Issue(RoleController, "controller", []string{"localhost", "127.0.0.1"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	lnmCert, lnmKey, err := ca.Issue(RoleLNM, "node7", nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, CACertFile)
	keys := filepath.Join(dir, "state", "tls-ticket-keys")
	os.MkdirAll(filepath.Dir(keys), 0o700)
	type seen struct {
		lnm     string
		resumed bool
	}
	// serve runs one "controller process": its own TLS configuration from
	// the files, one connection.
	serve := func(keyFile string) (addr string, got chan seen) {
		cfg, err := ServerTLS(ctlCert, ctlKey, caFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := UseTicketKeys(cfg, keyFile); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got = make(chan seen, 1)
		go func() {
			defer ln.Close()
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			c := tls.Server(raw, cfg)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := c.Handshake(); err != nil {
				got <- seen{}
				return
			}
			c.Write([]byte("x"))
			cs := c.ConnectionState()
			got <- seen{PeerLNM(cs), cs.DidResume}
			io.Copy(io.Discard, c) // until the client closes
		}()
		return ln.Addr().String(), got
	}
	client, err := ClientTLS(caFile, lnmCert, lnmKey, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	connect := func(addr string) bool {
		c, err := tls.Dial("tcp", addr, client)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil { // takes the session ticket too
			t.Fatal(err)
		}
		return c.ConnectionState().DidResume
	}
	for i, want := range []bool{false, true, true} { // first run, then two restarts
		addr, got := serve(keys)
		if resumed := connect(addr); resumed != want {
			t.Fatalf("connection %d: resumed %v, want %v", i, resumed, want)
		}
		if s := <-got; s.lnm != "node7" || s.resumed != want {
			t.Fatalf("connection %d: the controller saw %+v", i, s)
		}
	}
	addr, got := serve(filepath.Join(dir, "state", "other-keys"))
	if connect(addr) {
		t.Fatal("resumed a session with keys the controller never had")
	}
	if s := <-got; s.lnm != "node7" || s.resumed {
		t.Fatalf("full handshake: the controller saw %+v", s)
	}
	st, err := os.Stat(keys)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("ticket key file: %v, mode %v; want 0600", err, st.Mode())
	}
	// A day later the keys rotate: a new first key, the old one second.
	old, _ := ticketKeys(TicketFile(keys), time.Now())
	rotated, err := ticketKeys(TicketFile(keys), time.Now().Add(TicketRotation+time.Minute))
	if err != nil || len(rotated) != 2 || rotated[1] != old[0] || rotated[0] == old[0] {
		t.Fatalf("rotation: %d keys (err %v); want a new first key and the old one second", len(rotated), err)
	}
}
