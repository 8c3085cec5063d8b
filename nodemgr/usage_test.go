package nodemgr

import (
	"math"
	"testing"
	"time"
)

func TestAveragerConverges(t *testing.T) {
	var a Averager
	a.Add(Sample{CPU: 0}, 0)
	for i := 0; i < 60; i++ { // one minute of a steady 2-core load, 1 s samples
		a.Add(Sample{CPU: 2}, time.Second)
	}
	u := a.Usage()
	want1 := 2 * (1 - math.Exp(-1))
	if math.Abs(u.CPU.M1-want1) > 1e-9 {
		t.Fatalf("1-minute average %v, want %v", u.CPU.M1, want1)
	}
	if !(u.CPU.M1 > u.CPU.M5 && u.CPU.M5 > u.CPU.M15 && u.CPU.M15 > 0) {
		t.Fatalf("averages not ordered: %+v", u.CPU)
	}
}
