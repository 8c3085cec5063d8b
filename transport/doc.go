// Package transport carries Usher's links: TLS 1.3 connections each holding
// a yamux session; length-prefixed JSON frames; calls multiplexed on one
// pipe stream per session (binary headers, replies in any order) and
// long-lived streams for event feeds, LNM reports and serial consoles
// (ConsoleBridge, ConsoleRelay); typed registration
// and calls against the declarations of package api (Handle, HandleStream,
// Call, OpenStream) behind one Guard that checks each method's access.
//
// The limits an attacker meets first live here: handshake and login
// deadlines, sessions and pending (unauthenticated) connections per
// address, streams per session, frame sizes before and after login, a
// per-session budget for partially received frames, read and write
// deadlines on every stream, and keepalive. It also holds the site PKI (a
// CA issuing controller and LNM certificates), session-ticket keys, the
// LNM's recovery listener and the reconnection backoff.
//
// It may import api and nothing else of Usher's.
package transport
