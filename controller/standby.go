package controller

import (
	"context"
	"crypto/tls"
	"net"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/transport"
)

// ServeStandby serves a standby of highly available controllers on ln
// until ctx ends: a client's login and an LNM's registration — the first
// call of their sessions — are answered "not the leader, the leader is X"
// (api.NotLeader with leader()'s address), which clients and LNMs follow;
// every other call gets the same answer. Nothing else is served.
func ServeStandby(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, opts transport.ServerOptions, leader func() string) error {
	answer := func() error { return api.NotLeader(leader()) }
	m := transport.NewMux(func(ctx context.Context, s *transport.Session, method string, a api.Access) error {
		return answer()
	})
	transport.Handle(m, api.MAuth, func(ctx context.Context, _ api.AuthArgs) (api.AuthReply, error) { return api.AuthReply{}, answer() })
	transport.Handle(m, api.MHello, func(ctx context.Context, _ api.Hello) (api.HelloReply, error) { return api.HelloReply{}, answer() })
	srv := transport.NewServer(tlsCfg, opts, func(ctx context.Context, sess *transport.Session, p transport.Peer) {
		sess.SetMux(m)
		sess.Serve(ctx)
	})
	return srv.Serve(ctx, ln)
}
