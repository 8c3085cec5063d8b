// Package controller is the controller's network face: it serves the
// client link and the LNM link of package api over package transport, and
// adapts both to core.Controller. Access is checked once, by a guard that
// compares the caller (a logged-in user, an admin, a node certificate)
// with each method's declared api.Access; logins are rate-limited per
// user and per address; each LNM is believed only under its certificate's
// name. It also keeps the list of known LNMs (the controller's one state
// file besides policy data) and runs the announcement side of crash
// recovery.
//
// It may import api, core and transport.
package controller
