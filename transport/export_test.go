package transport

import (
	"context"
	"fmt"
	"net"

	"github.com/usher-vm/usher/api"
)

// RawStream opens a stream without sending a call frame (tests only).
func RawStream(s *Session) (net.Conn, error) { return s.ys.OpenStream() }

// newSession makes a session whose peer is authenticated.
func newSession(conn net.Conn, server bool, l Limits) (*Session, error) {
	return NewSession(conn, server, true, l, nil, nil)
}

// Call is an untyped call (tests name methods freely).
func (s *Session) Call(ctx context.Context, method string, args, reply any) error {
	return s.call(ctx, method, args, reply)
}

// Handle registers an untyped public handler (tests).
func (m *Mux) Handle(name string, h Handler) { m.calls[name] = callEntry{api.Public, h} }

// HandleStream registers an untyped public stream handler (tests).
func (m *Mux) HandleStream(name string, h StreamHandler) {
	m.streams[name] = streamEntry{api.Public, h}
}

type Error = api.Error

const (
	CodeRejected   = api.CodeRejected
	CodeUnknown    = api.CodeUnknown
	CodeBadRequest = api.CodeBadRequest
	CodeTooMany    = api.CodeTooMany
)

func Errorf(code, format string, args ...any) *api.Error {
	return &api.Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}
