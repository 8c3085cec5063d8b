package usher

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the site-level tests if any goroutine of the embedded
// sites, clients or harnesses they started is left running after them,
// and removes the usher binary the process tests built.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if buildBin != "" {
			os.RemoveAll(filepath.Dir(buildBin))
		}
		os.Exit(code)
	}))
}
