package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/usher-vm/usher/ha/member"
)

func runEtcd(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := newFlags("etcd", "--name NAME --data-dir DIR --client-url URL --peer-url URL [flags]", `Runs one embedded etcd member (etcd's own server, go.etcd.io/etcd/server/v3)
for sites that run highly available controllers (controller.etcd) without
an etcd of their own, and for tests. Three members, one per machine, make
a cluster that survives losing one. With --cert-file, --key-file and
--ca-file (the site CA: "usher ca issue --role controller --host HOST"),
clients and peers speak TLS and must present a certificate of the CA;
--allowed-cn narrows clients to the controllers' names.

Example (three machines, one line each):
  usher etcd --name m0 --data-dir /var/lib/usher/etcd \
      --client-url https://10.0.0.1:2379 --peer-url https://10.0.0.1:2380 \
      --initial-cluster m0=https://10.0.0.1:2380,m1=https://10.0.0.2:2380,m2=https://10.0.0.3:2380 \
      --cert-file /etc/usher/pki/m0.crt --key-file /etc/usher/pki/m0.key --ca-file /etc/usher/pki/ca.crt \
      --allowed-cn ctl1,ctl2,ctl3`, errOut)
	var c member.Config
	fs.StringVar(&c.Name, "name", "", "this member's name (unique in the cluster)")
	fs.StringVar(&c.Dir, "data-dir", "", "its data directory")
	fs.StringVar(&c.ClientURL, "client-url", "", "where clients (controllers) reach it, e.g. https://10.0.0.1:2379")
	fs.StringVar(&c.PeerURL, "peer-url", "", "where the other members reach it, e.g. https://10.0.0.1:2380")
	fs.StringVar(&c.InitialCluster, "initial-cluster", "", "every member: name=peer-url,... (default: this one alone)")
	fs.StringVar(&c.ClusterToken, "cluster-token", "usher", "a name for this cluster, unique among clusters on the same hosts")
	fs.BoolVar(&c.Existing, "join", false, "join an existing cluster (after etcdctl member add)")
	fs.StringVar(&c.CertFile, "cert-file", "", "TLS certificate (for clients and peers)")
	fs.StringVar(&c.KeyFile, "key-file", "", "TLS key")
	fs.StringVar(&c.CAFile, "ca-file", "", "CA whose certificates clients and peers must present")
	cns := fs.String("allowed-cn", "", "comma-separated client certificate names allowed (default: any of the CA)")
	fs.UintVar(&c.TickMs, "tick-ms", 100, "raft heartbeat interval")
	fs.UintVar(&c.ElectionMs, "election-ms", 1000, "raft election timeout")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.Name == "" || c.Dir == "" || c.ClientURL == "" || c.PeerURL == "" {
		fmt.Fprintln(errOut, "usher etcd: --name, --data-dir, --client-url and --peer-url are required (usher etcd --help)")
		return errUsage
	}
	if *cns != "" {
		c.AllowedCNs = strings.Split(*cns, ",")
	}
	log, err := logger(*logLevel, "text", errOut)
	if err != nil {
		return err
	}
	c.Logger = log
	return member.Run(ctx, c, nil)
}
