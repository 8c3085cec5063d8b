// Package client is Usher's public client API, the paper's Client API:
// connect and reconnect over TLS with a user name and password, the
// controller calls of Table 4 on lists of VMs, one method per operation of
// Table 3, VM and LNM sets given as regular expressions, explicit lists,
// ranges (sneetch[1-10]) or cluster names, and the user's VM objects cached
// locally and kept current by pushed events, with callbacks for changes.
// Requests the cache already knows to be invalid (a VM that does not exist
// or is not the user's) fail locally with a clear error. The cache is loaded
// with list after the event feed is open, the feed is read throughout (what
// arrives meanwhile and is newer than the list is applied on top), and a
// feed the controller cuts off for lagging is reopened and the cache
// reloaded on the same session.
//
// client and api are Usher's supported Go API: the shell (ush), the CLI,
// the benchmarks, tests and third-party tools use them. Calls take and
// return api types and fail with api errors (errors.Is against
// api.ErrForbidden, api.ErrRejected, ...); no transport type appears in
// this package's API. It may import api and transport.
package client
