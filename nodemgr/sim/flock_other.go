//go:build !unix

package sim

import (
	"errors"
	"io/fs"
	"os"
)

func flock(*os.File, bool) error {
	return errors.New("state files need flock, which this platform lacks")
}

func funlock(*os.File) {}

func fileIno(fs.FileInfo) uint64 { return 0 }
