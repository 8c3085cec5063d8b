package waitfor

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	err := Poll(context.Background(), time.Minute, func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n.Load() != 3 {
		t.Fatalf("err %v after %d calls", err, n.Load())
	}
}

func TestPollGivesTheLastReason(t *testing.T) {
	err := Poll(context.Background(), 20*time.Millisecond, func() error { return errors.New("disk still busy") })
	if err == nil || !strings.Contains(err.Error(), "disk still busy") {
		t.Fatalf("err %v", err)
	}
}

func TestPollStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Poll(ctx, time.Hour, func() error { return errors.New("never") })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}
