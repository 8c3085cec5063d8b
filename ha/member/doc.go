// Package member runs an embedded etcd member (go.etcd.io/etcd/server/v3/embed)
// for small sites and tests: `usher etcd` runs one per process, three make
// a cluster that survives losing one. Clients and peers speak TLS with the
// site's certificates when given (peers and clients must present a
// certificate of the site CA; AllowedCNs narrows clients to the
// controllers).
//
// It may import only the etcd server and client packages.
package member
