package usher

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the site-level tests if any goroutine of the embedded
// sites, clients or harnesses they started is left running after them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
