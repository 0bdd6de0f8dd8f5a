package cputime_test

import (
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/cputime"
)

// Burning CPU shows in Process: it grows by at least most of the busy
// time (the clock ticks coarsely on some kernels, hence the margin).
func TestProcessCountsBusyTime(t *testing.T) {
	if !cputime.Supported {
		t.Skip("this platform does not report process CPU time")
	}
	before := cputime.Process()
	deadline := time.Now().Add(100 * time.Millisecond)
	n := 0
	for time.Now().Before(deadline) {
		n++
	}
	if used := cputime.Process() - before; used < 50*time.Millisecond {
		t.Fatalf("100ms of busy work counted as %s of CPU (%d loops)", used, n)
	}
}
