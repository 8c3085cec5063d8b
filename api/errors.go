package api

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Error is an error of either link with a stable code. It travels as
// {"code", "msg"} (and "retry_ms" when the caller should wait before
// trying again). errors.Is(err, ErrForbidden) and the like work on it,
// on either side of the wire.
type Error struct {
	Code    string `json:"code"`
	Msg     string `json:"msg"`
	RetryMS int64  `json:"retry_ms,omitempty"` // too_many, unauthorized: wait this long before retrying
	Leader  string `json:"leader,omitempty"`   // not_leader: the leader's address, when known
}

// Error codes.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeRejected     = "rejected"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
	CodeTooMany      = "too_many"
	CodeUnknown      = "unknown_method"
	CodeNotLeader    = "not_leader" // a standby of highly available controllers: go to Error.Leader
)

// Sentinel errors, one per code: errors.Is(err, ErrRejected) holds for an
// Error with that code, and for any error wrapping the sentinel.
var (
	ErrBadRequest    = &sentinel{CodeBadRequest, "bad request"}
	ErrUnauthorized  = &sentinel{CodeUnauthorized, "authentication failed"}
	ErrForbidden     = &sentinel{CodeForbidden, "forbidden"}
	ErrNotFound      = &sentinel{CodeNotFound, "not found"}
	ErrRejected      = &sentinel{CodeRejected, "rejected by policy"}
	ErrUnavailable   = &sentinel{CodeUnavailable, "unavailable"}
	ErrInternal      = &sentinel{CodeInternal, "internal error"}
	ErrTooMany       = &sentinel{CodeTooMany, "too many"}
	ErrUnknownMethod = &sentinel{CodeUnknown, "unknown method"}
	ErrNotLeader     = &sentinel{CodeNotLeader, "not the leader"}
)

// sentinel is the type of the exported sentinels: comparable, and carrying
// the code an error wrapping it travels with.
type sentinel struct{ code, msg string }

func (s *sentinel) Error() string { return s.msg }

var sentinels = map[string]*sentinel{
	CodeBadRequest: ErrBadRequest, CodeUnauthorized: ErrUnauthorized, CodeForbidden: ErrForbidden,
	CodeNotFound: ErrNotFound, CodeRejected: ErrRejected, CodeUnavailable: ErrUnavailable,
	CodeInternal: ErrInternal, CodeTooMany: ErrTooMany, CodeUnknown: ErrUnknownMethod, CodeNotLeader: ErrNotLeader,
}

// NotLeader is a standby's answer: it does not lead; leader is where the
// leader is ("" when none is elected).
func NotLeader(leader string) *Error {
	msg := "this controller stands by; no leader is elected yet: try again"
	if leader != "" {
		msg = "this controller stands by; the leader is " + leader
	}
	return &Error{Code: CodeNotLeader, Msg: msg, Leader: leader}
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	s, ok := target.(*sentinel)
	return ok && s.code == e.Code
}

// RetryAfter is how long the caller should wait before retrying (0: not
// said).
func (e *Error) RetryAfter() time.Duration { return time.Duration(e.RetryMS) * time.Millisecond }

// Errorf builds an error of kind (one of the sentinels) whose message is
// the formatted text. The result wraps kind, so errors.Is(err, kind) holds
// and AsError gives it kind's code.
func Errorf(kind error, format string, args ...any) error {
	return &wrapped{kind: kind, msg: fmt.Sprintf(format, args...)}
}

type wrapped struct {
	kind error
	msg  string
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.kind }

// RetryAfter wraps err with a time the caller should wait before trying
// again; AsError carries it on the wire.
func RetryAfter(err error, d time.Duration) error { return &retry{err, d} }

type retry struct {
	error
	after time.Duration
}

func (r *retry) Unwrap() error { return r.error }

// AsError gives any error its wire form: an *Error keeps its code; an
// error wrapping a sentinel takes the sentinel's code; context deadlines
// and cancellations are unavailable; anything else is internal.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	out := &Error{Code: CodeInternal, Msg: err.Error()}
	for code, s := range sentinels {
		if errors.Is(err, s) {
			out.Code = code
			break
		}
	}
	if out.Code == CodeInternal && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		out.Code = CodeUnavailable
	}
	var r *retry
	if errors.As(err, &r) {
		out.RetryMS = r.after.Milliseconds()
	}
	return out
}

// FromCode is the error an *Error decoded from the wire stands for
// (itself; it matches its sentinel with errors.Is).
func FromCode(code, msg string) *Error { return &Error{Code: code, Msg: msg} }
