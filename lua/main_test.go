package lua

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left running
// after them: everything started has an owner that stops it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
