package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func frame(b []byte) []byte {
	var buf bytes.Buffer
	WriteFrame(&buf, b)
	return buf.Bytes()
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("y"), 70000)} {
		if err := WriteFrame(&buf, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []int{0, 1, 70000} {
		got, err := ReadFrame(&buf, DefaultMaxFrame)
		if err != nil || len(got) != want {
			t.Fatalf("got %d bytes, %v; want %d", len(got), err, want)
		}
	}
	if _, err := ReadFrame(&buf, DefaultMaxFrame); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
}

func TestFrameRejectsOversizeBeforeAllocating(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 0xFFFFFFFF)
	_, err := ReadFrame(bytes.NewReader(hdr[:]), 1024)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v", err)
	}
}

func TestFrameTruncated(t *testing.T) {
	b := frame([]byte(`{"m":"list"}`))
	_, err := ReadFrame(bytes.NewReader(b[:len(b)-3]), 1024)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v", err)
	}
}

func TestDecodeEnvelopeRejectsGarbage(t *testing.T) {
	for _, in := range []string{``, `null`, `{}`, `[1]`, `{"m":1}`, `{"m":"` + string(bytes.Repeat([]byte("a"), 100)) + `"}`, "\xff\xfe"} {
		if _, err := DecodeEnvelope([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if e, err := DecodeEnvelope([]byte(`{"m":"list","a":{"status":true}}`)); err != nil || e.Method != "list" {
		t.Fatalf("valid envelope: %v", err)
	}
}

// FuzzReadEnvelope: no input may panic the frame or message decoder, and
// anything accepted must re-encode and decode to the same method.
func FuzzReadEnvelope(f *testing.F) {
	f.Add(frame([]byte(`{"m":"start","a":{"cluster":"web","count":3}}`)))
	f.Add(frame([]byte(`{"r":{"vms":[]}}`)))
	f.Add(frame([]byte(`{"e":{"code":"bad_request","msg":"x"}}`)))
	f.Add([]byte{0, 0, 0, 5, '{', '}', '}', '}', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ReadEnvelope(bytes.NewReader(b), 1<<16)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteEnvelope(&buf, e); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		e2, err := ReadEnvelope(&buf, 1<<20)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if e2.Method != e.Method {
			t.Fatalf("method changed: %q → %q", e.Method, e2.Method)
		}
	})
}
