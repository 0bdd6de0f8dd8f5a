package relay

import (
	"runtime/metrics"
	"sync"
	"time"
)

// Contention says whether this process's goroutines have lately waited for
// a processor: whether the CPU, this process's or the machine's, is what
// limits it. Its Busy method is what BatchConfig.Contended takes.
//
// It reads the runtime's scheduling latencies (how long each goroutine that
// became runnable waited before it ran) over the last contentionEvery. On a
// processor with time to spare, a goroutine runs within tens of
// microseconds. When every processor is taken (by this process, by others on
// the machine, or by a container's CPU quota), many wait for a time slice:
// at least busyShare of them over slowRun turns Busy on, and it stays on
// until fewer than idleShare do, so that it does not flip with every sample.
type Contention struct {
	mu      sync.Mutex
	sample  []metrics.Sample
	prev    []uint64  // bucket counts at the last read
	slow    int       // index of the first bucket at or above slowRun
	last    time.Time // of the last read
	busy    bool
	readNow func() time.Time
}

const (
	// contentionEvery is the window Busy judges: it reads the latencies
	// at most this often.
	contentionEvery = 100 * time.Millisecond
	// contentionStale is when a window is too old to judge: the next read
	// only starts a new one.
	contentionStale = time.Second
	// slowRun is a wait for a processor that an idle one would not cause.
	slowRun = 500 * time.Microsecond
	// minRuns is the fewest goroutine runs a window needs to be judged
	// busy: a process that hardly runs is not held up by the CPU.
	minRuns = 64
)

// busyShare and idleShare, as 1/n: Busy turns on when at least 1 in 12 of
// a window's runs waited longer than slowRun, and off when fewer than 1 in
// 24 did. Measured on 2 cores (a load generator beside the ingress): 17–21%
// at the ingress's peak, 1–3% (at most 6%) at half of it.
const (
	busyShare = 12
	idleShare = 24
)

const schedLatencies = "/sched/latencies:seconds"

// NewContention returns a Contention; its first window starts now.
func NewContention() *Contention {
	c := &Contention{sample: []metrics.Sample{{Name: schedLatencies}}, readNow: time.Now}
	c.read(c.readNow())
	return c
}

// Busy reports whether goroutines have lately waited for a processor (see
// Contention). It is safe for concurrent use and cheap: it reads the
// runtime's counters at most every contentionEvery.
func (c *Contention) Busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.readNow()
	switch since := now.Sub(c.last); {
	case since < contentionEvery:
	case since > contentionStale:
		// A window this long says little about now: start a new one.
		c.read(now)
		c.busy = false
	default:
		prev := append([]uint64(nil), c.prev...)
		c.read(now)
		var runs, slow uint64
		for i, n := range c.prev {
			d := n - prev[i]
			runs += d
			if i >= c.slow {
				slow += d
			}
		}
		c.busy = contended(c.busy, runs, slow)

	}
	return c.busy
}

// read takes the runtime's counters as the start of the next window.
func (c *Contention) read(now time.Time) {
	metrics.Read(c.sample)
	h := c.sample[0].Value.Float64Histogram()
	if c.prev == nil {
		c.slow = len(h.Counts)
		for i := range h.Counts {
			if h.Buckets[i] >= slowRun.Seconds() {
				c.slow = i
				break
			}
		}
	}
	c.prev = append(c.prev[:0], h.Counts...)
	c.last = now
}

// contended decides a window of runs goroutine runs of which slow waited
// longer than slowRun, given whether the last window was busy.
func contended(wasBusy bool, runs, slow uint64) bool {
	switch {
	case runs < minRuns:
		return false
	case wasBusy:
		return slow*idleShare >= runs
	default:
		return slow*busyShare >= runs
	}
}
