// Package client is Usher's public client API, the paper's Client API:
// connect and reconnect over TLS with a user name and password, the
// controller calls of Table 4 on lists of VMs, one method per operation of
// Table 3, VM and LNM sets given as regular expressions, explicit lists,
// ranges (sneetch[1-10]) or cluster names, and the user's VM objects cached
// locally and kept current by pushed events, with callbacks for changes.
// Requests the cache already knows to be invalid (a VM that does not exist
// or is not the user's) fail locally with a clear error.
//
// The shell (ush), the CLI, tests and third-party tools use it. It may
// import core and transport.
package client
