package relay

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestContended(t *testing.T) {
	for _, tc := range []struct {
		wasBusy    bool
		runs, slow uint64
		want       bool
	}{
		{false, 1000, 0, false},
		{false, 1000, 83, false}, // under 1 in 12
		{false, 1200, 100, true}, // 1 in 12
		{false, 1000, 500, true},
		{false, minRuns - 1, minRuns - 1, false}, // too few runs to judge
		{true, minRuns - 1, minRuns - 1, false},
		{true, 1000, 42, true}, // still over 1 in 24
		{true, 1200, 50, true},
		{true, 1200, 49, false}, // under 1 in 24
		{true, 1000, 0, false},
	} {
		if got := contended(tc.wasBusy, tc.runs, tc.slow); got != tc.want {
			t.Errorf("contended(busy %v, %d runs, %d slow) = %v, want %v", tc.wasBusy, tc.runs, tc.slow, got, tc.want)
		}
	}
}

// Busy judges windows of contentionEvery: the same answer within one, a new
// window after a stale one.
func TestContentionWindows(t *testing.T) {
	c := NewContention()
	now := c.last
	c.readNow = func() time.Time { return now }
	c.busy = true
	now = now.Add(contentionEvery / 2)
	if !c.Busy() {
		t.Fatal("Busy changed its answer within a window")
	}
	now = now.Add(2 * contentionStale)
	if c.Busy() {
		t.Fatal("after a stale window, Busy kept its old answer")
	}
	if !c.last.Equal(now) {
		t.Fatal("a stale window did not start a new one")
	}
}

// With more goroutines wanting to run than there are processors, Busy turns
// on; once they stop, it turns off.
func TestContentionFollowsTheProcessors(t *testing.T) {
	c := NewContention()
	var stop atomic.Bool
	var wg sync.WaitGroup
	// Eight goroutines a processor, each working 100µs at a time and then
	// letting the others run: each waits for seven others' turns.
	for range 8 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for !stop.Load() {
				for start := time.Now(); time.Since(start) < 100*time.Microsecond; {
				}
				runtime.Gosched()
			}
		})
	}
	busy := waitFor(c, true, 5*time.Second)
	stop.Store(true)
	wg.Wait()
	if !busy {
		t.Fatal("with eight goroutines wanting each processor, Busy never turned on")
	}
	// Other tests' processes may share the machine: give it time. (A
	// quiet process also has too few runs to be judged busy.)
	if !waitFor(c, false, 20*time.Second) {
		t.Fatal("with the spinners stopped, Busy never turned off")
	}
}

func waitFor(c *Contention, want bool, within time.Duration) bool {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(contentionEvery / 4) {
		if c.Busy() == want {
			return true
		}
	}
	return false
}
