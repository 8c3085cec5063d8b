// Package ha is the highly available controller's footing on etcd
// (controller.etcd): a controller campaigns for leadership through an etcd
// lease and election, learns its leadership term (the revision that made
// it leader: every later leader's is higher), stops acting on its own the
// moment its lease can no longer be vouched for (before etcd can elect
// another), and writes the replicated state only through transactions
// that hold while it is still the leader of its term.
//
// It also keeps, in etcd, what a lone controller keeps in its state
// directory (Store: known LNMs, node modes, reservations, token and key
// documents; KV: the policies' usher.store), every write guarded by the
// term. It may import api and the etcd client;
// only the composition root (site) imports it. The embedded etcd member
// for small sites and tests is package ha/member.
package ha
