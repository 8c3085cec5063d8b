package client

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/transport"
)

// TestReloadRequestedDuringFirstLoad: a controller that finishes recovering
// (or cuts a lagging feed) while a client's first list is still on its
// way asks for a reload the client cannot do yet (its session is not
// current until the list lands). The client reloads once that load is in:
// a scripted controller holds the first list until the client has taken
// the recovered event and closed its feed, answers it with one VM, and the
// second list with both.
func TestReloadRequestedDuringFirstLoad(t *testing.T) {
	dir := t.TempDir()
	ca, err := transport.CreateCA(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue("controller", "controller", []string{"localhost", "127.0.0.1"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := transport.ServerTLS(cert, key, filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	vm := func(short string) *core.VM {
		return &core.VM{Name: short + ".alice.usher.test", Short: short, Owner: "alice", Cluster: "web", State: core.StateRunning, Version: 1}
	}
	var lists, feeds atomic.Int32
	firstFeedClosed := make(chan struct{})
	mux := transport.NewMux()
	mux.Handle(core.MAuth, func(context.Context, json.RawMessage) (any, error) {
		return core.AuthReply{Identity: core.Identity{User: "alice"}, Domain: "usher.test"}, nil
	})
	mux.HandleStream(core.MEvents, func(ctx context.Context, _ json.RawMessage, st *transport.Stream) error {
		defer st.Close()
		n := feeds.Add(1)
		if err := st.Send("ready", struct{}{}); err != nil {
			return err
		}
		if n == 1 {
			st.Send("event", core.Event{Seq: 1, Type: core.EvRecovered, Detail: core.StringMap{"lnms": "1", "vms": "2"}})
			st.Recv(10 * time.Second) // returns when the client closes this feed
			close(firstFeedClosed)
			return nil
		}
		<-ctx.Done()
		return nil
	})
	mux.Handle(core.MList, func(ctx context.Context, _ json.RawMessage) (any, error) {
		if lists.Add(1) == 1 {
			select {
			case <-firstFeedClosed:
			case <-time.After(10 * time.Second):
				t.Error("the client never closed its feed after the recovered event")
			}
			return core.ListReply{Seq: 1, VMs: []*core.VM{vm("web1")}}, nil
		}
		return core.ListReply{Seq: 2, VMs: []*core.VM{vm("web1"), vm("web2")}}, nil
	})
	srv := transport.NewServer(tlsCfg, transport.ServerOptions{Limits: transport.DefaultLimits()}, func(ctx context.Context, s *transport.Session, _ transport.Peer) {
		s.SetMux(mux)
		s.Serve(ctx)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, ln)

	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	c, err := Connect(cctx, Config{Addr: ln.Addr().String(), CAFile: filepath.Join(dir, "ca.crt"), ServerName: "localhost",
		User: "alice", Password: "pw", NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.CachedCount() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("cache holds %d VMs after %d lists; want 2 (reloaded after the first load)", c.CachedCount(), lists.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling the reload
	}
	if lists.Load() != 2 || feeds.Load() != 2 {
		t.Fatalf("%d lists on %d feeds, want 2 and 2", lists.Load(), feeds.Load())
	}
}
