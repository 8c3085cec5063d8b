package client

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/internal/waitfor"

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
	vm := func(short string) *api.VM {
		return &api.VM{Name: short + ".alice.usher.test", Short: short, Owner: "alice", Cluster: "web", State: api.StateRunning, Version: 1}
	}
	var lists, feeds atomic.Int32
	firstFeedClosed := make(chan struct{})
	mux := transport.NewMux(nil)
	transport.Handle(mux, api.MAuth, func(context.Context, api.AuthArgs) (api.AuthReply, error) {
		return api.AuthReply{Identity: api.Identity{User: "alice"}, Domain: "usher.test"}, nil
	})
	transport.HandleStream(mux, api.MEvents, func(ctx context.Context, _ api.EventsArgs, st *transport.Stream) error {
		defer st.Close()
		n := feeds.Add(1)
		if err := st.Send("ready", struct{}{}); err != nil {
			return err
		}
		if n == 1 {
			st.Send("event", api.Event{Seq: 1, Type: api.EvRecovered, Detail: api.StringMap{"lnms": "1", "vms": "2"}})
			st.Recv(10 * time.Second) // returns when the client closes this feed
			close(firstFeedClosed)
			return nil
		}
		<-ctx.Done()
		return nil
	})
	transport.Handle(mux, api.MList, func(ctx context.Context, _ api.ListArgs) (*api.ListReply, error) {
		if lists.Add(1) == 1 {
			select {
			case <-firstFeedClosed:
			case <-time.After(10 * time.Second):
				t.Error("the client never closed its feed after the recovered event")
			}
			return &api.ListReply{Seq: 1, VMs: []*api.VM{vm("web1")}}, nil
		}
		return &api.ListReply{Seq: 2, VMs: []*api.VM{vm("web1"), vm("web2")}}, nil
	})
	srv := transport.NewServer(tlsCfg, transport.ServerOptions{Limits: transport.DefaultLimits()}, func(ctx context.Context, s *transport.Session, _ transport.Peer) {
		s.Authenticated()
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
	waitfor.Error(t, 10*time.Second, "the cache to reload after the first load", func() error {
		if n := c.CachedCount(); n != 2 {
			return fmt.Errorf("it holds %d VMs after %d lists, want 2", n, lists.Load())
		}
		return nil
	})
	if lists.Load() != 2 || feeds.Load() != 2 {
		t.Fatalf("%d lists on %d feeds, want 2 and 2", lists.Load(), feeds.Load())
	}
}
