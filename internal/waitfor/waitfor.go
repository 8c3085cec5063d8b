package waitfor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

const (
	first = 5 * time.Millisecond
	most  = 200 * time.Millisecond
)

// Poll calls f until it returns nil, ctx ends or limit passes; it returns
// nil or f's last error with what timed out.
func Poll(ctx context.Context, limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	wait := first
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		err := f()
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not within %v: %w", limit, err)
		}
		timer.Reset(min(wait, left))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-timer.C:
		}
		wait = min(2*wait, most)
	}
}

// Error waits until f returns nil and fails t if it does not within limit,
// with f's last error.
func Error(t testing.TB, limit time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(t.Context(), limit, f); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

var errNotYet = errors.New("condition not met")

// True waits until f returns true and fails t if it does not within limit.
func True(t testing.TB, limit time.Duration, what string, f func() bool) {
	t.Helper()
	Error(t, limit, what, func() error {
		if f() {
			return nil
		}
		return errNotYet
	})
}
