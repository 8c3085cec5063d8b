package controller

import (
	"errors"
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
