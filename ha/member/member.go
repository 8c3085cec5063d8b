package member

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config is one member.
type Config struct {
	Name           string
	Dir            string   // its data directory
	ClientURL      string   // e.g. https://127.0.0.1:2379
	PeerURL        string   // e.g. https://127.0.0.1:2380
	InitialCluster string   // name=peerURL,... (all members)
	ClusterToken   string   // distinguishes clusters sharing hosts
	Existing       bool     // join an existing cluster (after "member add")
	CertFile       string   // TLS (client and peer): this member's certificate,
	KeyFile        string   // its key,
	CAFile         string   // and the CA whose certificates it accepts
	AllowedCNs     []string // client certificate common names allowed (empty: any of the CA)
	TickMs         uint
	ElectionMs     uint
	Logger         *slog.Logger
}

// Run starts the member and serves until ctx ends; it returns once the
// member has stopped. ready, if not nil, is closed once it serves.
func Run(ctx context.Context, c Config, ready chan<- struct{}) error {
	if c.Name == "" || c.Dir == "" || c.ClientURL == "" || c.PeerURL == "" {
		return errors.New("etcd member: name, data dir, client and peer URLs are required")
	}
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return fmt.Errorf("etcd member: client URL: %w", err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return fmt.Errorf("etcd member: peer URL: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = c.Name, c.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = c.InitialCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = c.Name + "=" + c.PeerURL
	}
	cfg.InitialClusterToken = c.ClusterToken
	if cfg.InitialClusterToken == "" {
		cfg.InitialClusterToken = "usher"
	}
	cfg.ClusterState = embed.ClusterStateFlagNew
	if c.Existing {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	if c.TickMs > 0 {
		cfg.TickMs = c.TickMs
	}
	if c.ElectionMs > 0 {
		cfg.ElectionMs = c.ElectionMs
	}
	cfg.LogLevel = "error"
	if c.CertFile != "" {
		tlsInfo := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile, ClientCertAuth: true}
		cfg.PeerTLSInfo = tlsInfo
		client := tlsInfo
		client.AllowedCNs = c.AllowedCNs
		cfg.ClientTLSInfo = client
	} else if cu.Scheme == "https" || pu.Scheme == "https" {
		return errors.New("etcd member: https URLs need cert, key and CA files")
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd member %s: %w", c.Name, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", c.Name, err)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("etcd member %s: not ready after 5 minutes (are the other members up?)", c.Name)
	}
	if c.Logger != nil {
		c.Logger.Info("etcd member serving", "name", c.Name, "client", c.ClientURL, "peer", c.PeerURL)
	}
	if ready != nil {
		close(ready)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", c.Name, err)
	}
}
