package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

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

// ServeStandbyHTTP serves the HTTP API's address of a standby on ln until
// ctx ends. Every request is sent to the leader: a 307 redirect to the
// same path on the leader's HTTP API when leader names it (httpURL, e.g.
// https://ctl1.example:8443), else 503 with Retry-After; the body is the
// api.Error not_leader with the leader's native address either way.
// Clients that follow redirects (curl -L, browsers) reach the leader; a
// redirect to another host drops their Authorization header (Go, curl),
// so API clients that send tokens should list every controller and retry
// on 503.
func ServeStandbyHTTP(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, leader func() (addr, httpURL string)) error {
	cfg := tlsCfg.Clone()
	cfg.ClientAuth = tls.NoClientCert
	cfg.NextProtos = []string{"h2", "http/1.1"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr, url := leader()
		e := api.NotLeader(addr)
		if url != "" {
			w.Header().Set("Location", strings.TrimSuffix(url, "/")+r.URL.RequestURI())
			writeJSON(w, http.StatusTemporaryRedirect, map[string]*api.Error{"error": e})
			return
		}
		w.Header().Set("Retry-After", "1")
		writeError(w, r, e)
	})
	srv := &http.Server{Handler: h, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	return serveUntil(ctx, srv, tls.NewListener(ln, cfg))
}

// serveUntil serves srv on ln until ctx ends (then shuts it down, giving
// requests under way 5 s) or it fails.
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		cancel()
		err = <-errc
	case err = <-errc:
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
