// Package transport carries Usher's links: TLS 1.3 connections each holding
// a yamux session, one stream per call plus long-lived streams for pushed
// events, length-prefixed JSON frames, per-stream deadlines, per-session
// stream caps, handshake deadlines and per-peer session caps. It also holds
// the site PKI (a CA issuing controller and LNM certificates) and the
// controller's endpoint, which adapts sessions to core.Controller.
//
// It may import core (message types, the controller) and nothing else of
// Usher's.
package transport
