// Package controller is the controller's network face: it serves the
// client link and the LNM link of package api over package transport, and
// the HTTP API (resources over HTTPS, Server-Sent Events, operations, the
// OpenAPI document, Prometheus metrics, the web console of package
// webui), and adapts all of them to core.Controller. Access is checked
// once per link: a guard compares the caller (a logged-in user, an admin,
// a node certificate) with each native method's declared api.Access, and
// every HTTP route authenticates through the same chain (HTTP Basic, or
// an API token); logins are rate-limited per user and per address across
// both links; each LNM is believed only under its certificate's name. It
// keeps the controller's small state files besides policy data: the known
// LNMs, users' SSH keys and API tokens. It relays serial consoles between
// clients and nodes and runs the announcement side of crash recovery.
//
// It may import api, core, transport, images, client (VM set expressions)
// and its webui.
package controller
