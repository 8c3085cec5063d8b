// Package api is Usher's contract: the messages and the method sets of
// both links, client↔controller (the paper's Table 4 and session
// plumbing) and controller↔LNM (Table 2), as Go types. Each method is
// declared once here with its argument and reply types and who may call
// it; both ends register their handlers and make their calls against these
// declarations (package transport carries them, package controller serves
// the client link, package nodemgr serves the LNM link). Errors travel as
// an Error with a stable code and work with errors.Is against the exported
// sentinels (ErrForbidden, ErrRejected, ...).
//
// api and client are Usher's supported Go API. api imports only the
// standard library; every other package of Usher may import it.
package api
