package cputime_test

import (
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/cputime"
)

// Busy work shows in Process. The loop runs until 20ms of CPU are counted,
// however slowly a loaded machine schedules it, and fails only if that
// takes 10s of wall time; it also fails if the count ever goes backwards.
func TestProcessCountsBusyTime(t *testing.T) {
	if !cputime.Supported {
		t.Skip("this platform does not report process CPU time")
	}
	start := cputime.Process()
	deadline := time.Now().Add(10 * time.Second)
	last := start
	for {
		now := cputime.Process()
		if now < last {
			t.Fatalf("CPU time went backwards: %s after %s", now, last)
		}
		last = now
		if now-start >= 20*time.Millisecond {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s of busy work counted as %s of CPU", now-start)
		}
	}
}
