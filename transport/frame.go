package transport

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxFrame bounds one frame's payload. A frame carries one request,
// one reply or one pushed event; lists of a million VMs are paged below it.
const DefaultMaxFrame = 32 << 20

// ErrFrameTooLarge reports a frame whose declared length exceeds the limit.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes one frame: a 4-byte big-endian length, then payload.
func WriteFrame(w io.Writer, payload []byte) error {
	var hdr [4]byte
	if uint64(len(payload)) > 0xFFFFFFFF {
		return ErrFrameTooLarge
	}
	binary.BigEndian.PutUint32(hdr[:], uint32(len(payload)))
	if bw, ok := w.(*bufio.Writer); ok {
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		_, err := bw.Write(payload)
		return err
	}
	buf := make([]byte, 0, 4+len(payload))
	buf = append(buf, hdr[:]...)
	buf = append(buf, payload...)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame of at most max bytes. A declared length over max
// is refused before anything is allocated (ErrFrameTooLarge, returned with
// the 4-byte header so the caller may skip the frame's bytes).
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		// The header comes back with the error so a reader can skip the frame.
		return hdr[:], fmt.Errorf("%w: %d bytes declared, limit %d", ErrFrameTooLarge, n, max)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte frame: %w", n, err)
	}
	return buf, nil
}

// Envelope is the one message shape on every stream. A call sends
// {method, args}; the answer is {result} or {error}. Pushed events use
// {method: "event", args}.
type Envelope struct {
	Method string          `json:"m,omitempty"`
	Args   json.RawMessage `json:"a,omitempty"`
	Result json.RawMessage `json:"r,omitempty"`
	Error  *Error          `json:"e,omitempty"`
}

// Error is a remote error with a stable code.
type Error struct {
	Code string `json:"code"`
	Msg  string `json:"msg"`
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
)

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// Errorf builds a remote error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// DecodeEnvelope parses and validates one frame's payload.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	var e Envelope
	if err := Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("malformed message: %w", err)
	}
	if e.Method == "" && e.Result == nil && e.Error == nil {
		return nil, errors.New("malformed message: no method, result or error")
	}
	if len(e.Method) > 64 {
		return nil, errors.New("malformed message: method name too long")
	}
	return &e, nil
}

// ReadEnvelope reads and decodes one frame.
func ReadEnvelope(r io.Reader, max int) (*Envelope, error) {
	b, err := ReadFrame(r, max)
	if err != nil {
		return nil, err
	}
	return DecodeEnvelope(b)
}

// WriteEnvelope encodes and writes one frame.
func WriteEnvelope(w io.Writer, e *Envelope) error {
	b, err := Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding message: %w", err)
	}
	return WriteFrame(w, b)
}
