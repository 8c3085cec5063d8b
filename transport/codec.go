package transport

import segjson "github.com/segmentio/encoding/json"

// The wire codec. Every frame body is JSON, encoded and decoded with
// segmentio/encoding/json: a drop-in for encoding/json (same tags, same
// results, the same error types; fuzzed against encoding/json by its
// authors) that is two to four times faster on Usher's messages, which is
// most of the per-call CPU on both ends of a link. Use these, not
// encoding/json, for anything that goes over a link.

// Marshal encodes v for the wire.
func Marshal(v any) ([]byte, error) { return segjson.Marshal(v) }

// Unmarshal decodes a wire body into v.
func Unmarshal(b []byte, v any) error { return segjson.Unmarshal(b, v) }
