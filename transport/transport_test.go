package transport_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/transport"
)

type env struct {
	addr   string
	dir    string
	ca     *transport.CA
	caFile string
	lim    transport.Limits
	c      *core.Controller
}

func start(t *testing.T, mutate func(*transport.ServerOptions)) *env {
	t.Helper()
	return startWith(t, func(o *transport.ControllerOptions) {
		if mutate != nil {
			mutate(&o.Server)
		}
	})
}

func startWith(t *testing.T, mutate func(*transport.ControllerOptions)) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := transport.CreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(transport.RoleController, "controller", []string{"localhost", "127.0.0.1"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, transport.CACertFile)
	tlsCfg, err := transport.ServerTLS(cert, key, caFile)
	if err != nil {
		t.Fatal(err)
	}
	h := coretest.New(map[string]string{"alice": "pw"})
	c := core.New(core.Config{}, h)
	lim := transport.DefaultLimits()
	lim.HandshakeTimeout = 500 * time.Millisecond
	lim.MaxStreams = 16
	lim.KeepAlive = 500 * time.Millisecond
	co := transport.ControllerOptions{Server: transport.ServerOptions{Limits: lim, MaxHandshaking: 8}, ReportInterval: 200 * time.Millisecond}
	if mutate != nil {
		mutate(&co)
	}
	so := co.Server
	srv := transport.NewControllerServer(c, tlsCfg, co)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &env{addr: ln.Addr().String(), dir: dir, ca: ca, caFile: caFile, lim: so.Limits, c: c}
}

func (e *env) dialUser(t *testing.T) *transport.Session {
	t.Helper()
	cfg, err := transport.ClientTLS(e.caFile, "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	s, err := transport.Dial(context.Background(), e.addr, cfg, e.lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetMux(transport.NewMux())
	go s.Serve(context.Background())
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) login(t *testing.T) *transport.Session {
	s := e.dialUser(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Call(ctx, core.MAuth, core.AuthArgs{User: "alice", Password: "pw"}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitClosed waits for the peer to close conn, failing after d.
func waitClosed(t *testing.T, conn net.Conn, d time.Duration) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", d)
		}
		return
	}
}

func TestHandshakeDeadline(t *testing.T) {
	e := start(t, nil)
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Never send a ClientHello: the server must cut us off.
	waitClosed(t, conn, 5*time.Second)
}

func TestUnauthenticatedFloodIsShed(t *testing.T) {
	e := start(t, nil)
	var conns []net.Conn
	for i := 0; i < 40; i++ {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Every stalled connection is closed within the handshake bound (the
	// excess at once), and afterwards a real user is served.
	for _, c := range conns {
		waitClosed(t, c, 5*time.Second)
	}
	s := e.login(t)
	var who core.Identity
	if err := s.Call(context.Background(), core.MWhoami, nil, &who); err != nil || who.User != "alice" {
		t.Fatalf("after flood: %v %+v", err, who)
	}
}

func TestCallsNeedAuthentication(t *testing.T) {
	e := start(t, nil)
	s := e.dialUser(t)
	err := s.Call(context.Background(), core.MList, core.ListArgs{}, nil)
	var we *transport.Error
	if !errors.As(err, &we) || we.Code != transport.CodeUnauthorized {
		t.Fatalf("unauthenticated list: %v", err)
	}
	// and a session that never authenticates is closed
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("unauthenticated session left open")
	}
}

func TestRepeatedWrongPasswordsCutSession(t *testing.T) {
	e := start(t, nil)
	s := e.dialUser(t)
	for i := 0; i < 3; i++ {
		err := s.Call(context.Background(), core.MAuth, core.AuthArgs{User: "alice", Password: "nope"}, nil)
		if err == nil || !strings.Contains(err.Error(), "unauthorized") {
			t.Fatalf("wrong password %d: %v", i, err)
		}
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session survives repeated failures")
	}
}

func TestStreamFloodIsCapped(t *testing.T) {
	e := start(t, nil)
	s := e.login(t)
	// Open many streams that each start a call and never read the answer:
	// beyond MaxStreams the server answers too_many; it keeps serving.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var streams []*transport.Stream
	for i := 0; i < 200; i++ {
		st, err := s.OpenStream(ctx, core.MEvents, nil)
		if err != nil {
			break
		}
		streams = append(streams, st)
	}
	tooMany := 0
	for _, st := range streams {
		env, err := st.Recv(5 * time.Second)
		if err == nil && env.Error != nil && env.Error.Code == transport.CodeTooMany {
			tooMany++
		}
	}
	if tooMany == 0 {
		t.Fatal("no stream was refused")
	}
	for _, st := range streams {
		st.Close()
	}
	// A fresh session is served normally.
	s2 := e.login(t)
	if err := s2.Call(context.Background(), core.MWhoami, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestStuckStreamIsCutOff(t *testing.T) {
	e := start(t, nil)
	s := e.login(t)
	// Open a raw stream and send nothing: the server's per-stream deadline
	// closes it (yamux's keepalive would not notice).
	st, err := s.OpenStream(context.Background(), "", nil)
	if err == nil {
		// OpenStream always sends a call frame; the empty method is refused.
		env, rerr := st.Recv(5 * time.Second)
		if rerr == nil && env.Error == nil {
			t.Fatal("empty method accepted")
		}
	}
	raw, err := transport.RawStream(s)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(raw)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("stuck stream not closed by the server")
	}
}

func TestOversizedFrameRefused(t *testing.T) {
	e := start(t, func(o *transport.ServerOptions) { o.Limits.MaxFrame = 1024 })
	s := e.login(t)
	big := strings.Repeat("a", 4096)
	err := s.Call(context.Background(), core.MList, core.ListArgs{Names: []string{big}}, nil)
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("oversized frame: %v", err)
	}
}

func lnmSession(t *testing.T, e *env, certName string) *transport.Session {
	t.Helper()
	cert, key, err := e.ca.Issue(transport.RoleLNM, certName, nil, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := transport.ClientTLS(e.caFile, cert, key, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	s, err := transport.Dial(context.Background(), e.addr, cfg, e.lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLNMCertificateNamesItsNode(t *testing.T) {
	e := start(t, nil)
	s := lnmSession(t, e, "nodeA")
	s.SetMux(transport.NewMux())
	go s.Serve(context.Background())
	err := s.Call(context.Background(), core.MLNMHello, core.LNMHello{Node: core.NodeInfo{Name: "nodeB"}}, nil)
	var we *transport.Error
	if !errors.As(err, &we) || we.Code != transport.CodeForbidden {
		t.Fatalf("nodeA registering as nodeB: %v", err)
	}
	if _, ok := e.c.State().LNM("nodeB"); ok {
		t.Fatal("nodeB registered")
	}
}

// TestLNMHelloCarriesStatus: registration takes the node's description
// and status from lnm_hello and calls back only list_vms; an LNM of an
// earlier release, whose hello has no status, is asked for it.
func TestLNMHelloCarriesStatus(t *testing.T) {
	e := start(t, nil)
	var statusCalls atomic.Int32
	register := func(name string, hello core.LNMHello) *core.LNM {
		t.Helper()
		s := lnmSession(t, e, name)
		m := transport.NewMux()
		m.Handle(core.LGetNodeStatus, func(ctx context.Context, _ json.RawMessage) (any, error) {
			statusCalls.Add(1)
			return core.NodeStatus{FreeMemMB: 1000, FreeVCPUs: 2}, nil
		})
		m.Handle(core.LListVMs, func(ctx context.Context, _ json.RawMessage) (any, error) { return core.ListVMsReply{}, nil })
		m.Handle(core.LReceive, func(ctx context.Context, _ json.RawMessage) (any, error) { return struct{}{}, nil })
		s.SetMux(m)
		go s.Serve(context.Background())
		if err := s.Call(context.Background(), core.MLNMHello, hello, nil); err != nil {
			t.Fatal(err)
		}
		l, ok := e.c.State().LNM(name)
		if !ok || l.State != core.LNMConnected {
			t.Fatalf("%s not registered: %+v", name, l)
		}
		return l
	}
	l := register("nodea", core.LNMHello{Node: core.NodeInfo{Name: "nodea", CPUs: 8, MemMB: 4096, Recovery: "10.0.0.7:7001"},
		Status: &core.NodeStatus{FreeMemMB: 3000, FreeVCPUs: 6}})
	if l.Info.CPUs != 8 || l.Info.Recovery != "10.0.0.7:7001" || l.Status.FreeMemMB != 3000 || l.Status.FreeVCPUs != 6 || statusCalls.Load() != 0 {
		t.Fatalf("registered %+v after %d status calls; want the hello's description and status, no call", l, statusCalls.Load())
	}
	l = register("nodeb", core.LNMHello{Node: core.NodeInfo{Name: "nodeb", CPUs: 4}})
	if l.Status.FreeMemMB != 1000 || statusCalls.Load() != 1 {
		t.Fatalf("older LNM registered %+v after %d status calls; want the status it was asked for", l, statusCalls.Load())
	}
}

func TestLNMCertificateCannotPoseAsController(t *testing.T) {
	e := start(t, nil)
	cert, key, err := e.ca.Issue(transport.RoleLNM, "evil", nil, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	cfg, err := transport.ClientTLS(e.caFile, "", "", "evil")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := transport.Dial(context.Background(), ln.Addr().String(), cfg, e.lim, nil); err == nil {
		t.Fatal("client accepted an LNM certificate as the controller")
	}
}

func TestUserWithoutCertificateCannotRegisterAsLNM(t *testing.T) {
	e := start(t, nil)
	s := e.dialUser(t)
	err := s.Call(context.Background(), core.MLNMHello, core.LNMHello{Node: core.NodeInfo{Name: "node1"}}, nil)
	if err == nil {
		t.Fatal("a peer without an LNM certificate registered as an LNM")
	}
}

// TestRegistrationsWaitTheirTurn: when more LNMs register at once than the
// controller admits, the rest wait instead of timing out, even when the
// whole queue takes longer than the handshake timeout (500 ms here).
func TestRegistrationsWaitTheirTurn(t *testing.T) {
	e2 := startWith(t, func(o *transport.ControllerOptions) { o.MaxRegistering = 1 })
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("slow%d", i)
		s := lnmSession(t, e2, name)
		m := transport.NewMux()
		// Each registration takes 300 ms on the LNM's side: four in turn
		// take 1.2 s, beyond the 500 ms handshake timeout.
		m.Handle(core.LListVMs, func(ctx context.Context, _ json.RawMessage) (any, error) {
			time.Sleep(300 * time.Millisecond)
			return core.ListVMsReply{}, nil
		})
		m.Handle(core.LReceive, func(ctx context.Context, _ json.RawMessage) (any, error) { return struct{}{}, nil })
		s.SetMux(m)
		go s.Serve(context.Background())
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs <- s.Call(ctx, core.MLNMHello, core.LNMHello{Node: core.NodeInfo{Name: name, CPUs: 1, MemMB: 1024, Driver: "sim"}, Status: &core.NodeStatus{}}, nil)
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("registration: %v", err)
		}
	}
	for i := 0; i < n; i++ {
		if l, ok := e2.c.State().LNM(fmt.Sprintf("slow%d", i)); !ok || l.State != core.LNMConnected {
			t.Fatalf("slow%d not connected", i)
		}
	}
}

// TestHandshakeHerdWaitsItsTurn: more peers than MaxHandshaking connecting
// at once are served in turn, not refused: up to five times as many
// accepted and waiting, the rest (here 11 of 16) in the kernel's accept
// queue.
func TestHandshakeHerdWaitsItsTurn(t *testing.T) {
	e := start(t, func(o *transport.ServerOptions) { o.MaxHandshaking = 1 })
	cfg, err := transport.ClientTLS(e.caFile, "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	const herd = 16
	errs := make(chan error, herd)
	for i := 0; i < herd; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := transport.Dial(ctx, e.addr, cfg, e.lim, nil)
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			s.SetMux(transport.NewMux())
			go s.Serve(context.Background())
			errs <- s.Call(ctx, core.MAuth, core.AuthArgs{User: "alice", Password: "pw"}, nil)
		}()
	}
	for i := 0; i < herd; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("a peer of the herd was not served: %v", err)
		}
	}
}
