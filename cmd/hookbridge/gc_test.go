package main

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testwait"
)

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tn := tuneGC(func(string) (string, bool) { return "", false })
	tn.stopped.Store(true) // the rest of the test binary keeps its own target
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("without GOGC the target is %d, want %d", got, gcPercent)
	}
	if tn := tuneGC(func(k string) (string, bool) { return "50", k == "GOGC" }); tn != nil {
		t.Error("with GOGC set, tuneGC started a tuner")
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("with GOGC set, tuneGC changed the target to %d", got)
	}
}

// The target stays at gcPercent for a small live heap and falls toward Go's
// default as the live heap grows, so the heap's room to grow stays near
// gcHeadroom instead of three times what is live.
func TestGCPercentFor(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		live uint64
		want int
	}{
		{0, 300},
		{4 << 20, 300},
		{8 << 20, 300},
		{12 << 20, 200},
		{16 << 20, 150},
		{20 << 20, 120},
		{24 << 20, 100},
		{100 << 20, 100},
	} {
		if got := gcPercentFor(tt.live); got != tt.want {
			t.Errorf("live %d MiB: GOGC %d, want %d", tt.live>>20, got, tt.want)
		}
	}
}

// The tuner follows the live heap after collections, and sets the target
// only when it changes.
func TestGCTunerFollowsLiveHeap(t *testing.T) {
	var live atomic.Uint64
	var set, calls atomic.Int64
	tn := &gcTuner{
		live: live.Load,
		set:  func(p int) int { set.Store(int64(p)); calls.Add(1); return 0 },
	}
	tn.current = gcPercent
	t.Cleanup(func() { tn.stopped.Store(true) })
	live.Store(4 << 20)
	tn.arm()
	for range 3 {
		runtime.GC()
	}
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Fatalf("a small live heap changed the target %d times", n)
	}
	live.Store(64 << 20)
	testwait.Until(t, 10*time.Second, "the target follows a 64 MiB live heap", func() bool {
		runtime.GC()
		return set.Load() == gcMinPercent
	})
	live.Store(2 << 20)
	testwait.Until(t, 10*time.Second, "the target comes back for a small live heap", func() bool {
		runtime.GC()
		return set.Load() == gcPercent
	})
	if n := calls.Load(); n != 2 {
		t.Errorf("%d changes of the target, want 2", n)
	}
}
