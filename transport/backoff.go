package transport

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// NewBackoff is the reconnect backoff of Usher's dialers (an LNM's to its
// controller, a client's): exponential from min to max with ±50 % jitter,
// so that a site's nodes do not come back in step. It is
// github.com/cenkalti/backoff's, configured once here.
func NewBackoff(min, max time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = min, max
	b.Multiplier, b.RandomizationFactor = 2, 0.5
	b.Reset()
	return b
}
