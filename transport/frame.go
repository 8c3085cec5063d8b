package transport

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/usher-vm/usher/api"
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
func ReadFrame(r io.Reader, max int) ([]byte, error) { return readFrame(r, max, nil, nil) }

// ErrFrameBudget is returned when a frame being received would hold more
// memory than the session (or its server) allows for partial frames.
var ErrFrameBudget = errors.New("too much data in partly received frames")

// frameChunk is how much of a frame is allocated ahead of its data: a
// frame's buffer starts at this size and doubles as data arrives, so it
// follows what was sent, not what the header declared.
const frameChunk = 16 << 10

// Budget bounds the bytes of frames being received: a session's own, and
// through parent those of every session of a server.
type Budget struct {
	limit  int64
	used   atomic.Int64
	parent *Budget
}

// NewBudget returns a Budget of limit bytes shared by every session given
// it (ServerOptions.MaxPartial).
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

func (b *Budget) take(n int64) bool {
	if b == nil {
		return true
	}
	if b.used.Add(n) > b.limit {
		b.used.Add(-n)
		return false
	}
	if !b.parent.take(n) {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *Budget) give(n int64) {
	if b == nil {
		return
	}
	b.used.Add(-n)
	b.parent.give(n)
}

// readFrame reads one frame: the header, then the body in chunks as it
// arrives, each chunk taken from bud first. begun runs once the header is
// in (to set the deadline for the rest).
func readFrame(r io.Reader, limit int, bud *Budget, begun func()) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if uint64(n) > uint64(limit) {
		// The header comes back with the error so a reader can skip the frame.
		return hdr[:], fmt.Errorf("%w: %d bytes declared, limit %d", ErrFrameTooLarge, n, limit)
	}
	if begun != nil {
		begun()
	}
	var held int64
	defer func() { bud.give(held) }()
	var buf []byte
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grow := min(n-len(buf), max(cap(buf), frameChunk))
			if !bud.take(int64(grow)) {
				return nil, fmt.Errorf("%w (%d of a %d-byte frame received)", ErrFrameBudget, len(buf), n)
			}
			held += int64(grow)
			buf = slices.Grow(buf, grow)
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("reading %d-byte frame: %w", n, err)
		}
	}
	if buf == nil {
		buf = []byte{}
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
	Error  *api.Error      `json:"e,omitempty"`
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
