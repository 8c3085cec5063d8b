package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/google/renameio/v2"
)

// Blob is one document of the controller's persistent state: a file in
// the state directory (FileBlob) or, for highly available controllers, a
// key in etcd (package ha).
type Blob interface {
	Name() string           // what to call it in messages
	Read() ([]byte, error)  // nil, nil when there is none yet
	Write([]byte) error     // atomically
	Aside() (string, error) // keeps a damaged copy aside (its new name) and starts afresh
}

// FileBlob is a document in a file, rewritten atomically (temp file +
// fsync + rename), mode 0600.
type FileBlob string

// Name implements Blob.
func (f FileBlob) Name() string { return string(f) }

// Read implements Blob.
func (f FileBlob) Read() ([]byte, error) {
	b, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// Write implements Blob.
func (f FileBlob) Write(b []byte) error { return renameio.WriteFile(string(f), b, 0o600) }

// Aside implements Blob.
func (f FileBlob) Aside() (string, error) { return MoveAside(string(f)) }

// LoadJSON reads a JSON document of kind what from b and checks it with
// valid. None kept is the zero value. A damaged one is set aside (Aside)
// with a loud log line saying what is lost, and the zero value returned:
// the controller starts.
func LoadJSON[T any](b Blob, what, lost string, log *slog.Logger, valid func(T) error) (T, error) {
	var v, zero T
	raw, err := b.Read()
	if err != nil {
		return zero, fmt.Errorf("reading %s: %w", what, err)
	}
	if raw == nil {
		return zero, nil
	}
	err = json.Unmarshal(raw, &v)
	if err == nil {
		err = valid(v)
	}
	if err != nil {
		aside, aerr := b.Aside()
		if aerr != nil {
			return zero, fmt.Errorf("%s %s is damaged (%v) and could not be set aside: %w", what, b.Name(), err, aerr)
		}
		log.Error(what+" damaged: set aside; "+lost, "file", b.Name(), "moved_to", aside, "err", err)
		return zero, nil
	}
	return v, nil
}

// SaveJSON returns what writes a JSON document of kind what to b (the
// core's SaveModes, SaveReservations).
func SaveJSON[T any](b Blob, what string) func(T) error {
	return func(v T) error {
		raw, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if err := b.Write(raw); err != nil {
			return fmt.Errorf("saving %s: %w", what, err)
		}
		return nil
	}
}
