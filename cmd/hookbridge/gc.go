package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// The garbage collector's target (GOGC), unless the environment sets one.
// hookbridge's servers keep a live heap of a few MiB and allocate for every
// request, so Go's default of 100 runs the collector every few hundred
// requests; gcPercent cuts the collector's CPU by about two thirds for about
// 8 MiB more resident memory under full load (see the README's Performance
// section). A live heap that grows, as the ingress's replay defence does
// under sustained load (about 110 bytes for each token of the last minutes),
// is not multiplied by four: above gcHeadroom/3 the target falls so that the
// heap may grow by gcHeadroom over what is live, down to Go's default.
const (
	gcPercent    = 300
	gcMinPercent = 100
	gcHeadroom   = 24 << 20
)

// gcPercentFor is the target for a live heap of live bytes.
func gcPercentFor(live uint64) int {
	if live == 0 {
		return gcPercent
	}
	p := int(min(gcHeadroom*100/live, gcPercent))
	p -= p % 10 // a step of 10: not a change after every collection
	return max(p, gcMinPercent)
}

// tuneGC sets the collector's target unless GOGC is in the environment
// (lookup is os.LookupEnv), and keeps it at gcPercentFor the live heap after
// every collection; GOMEMLIMIT, if set, still applies. It returns the tuner,
// or nil when GOGC is set.
func tuneGC(lookup func(string) (string, bool)) *gcTuner {
	if _, set := lookup("GOGC"); set {
		return nil
	}
	t := &gcTuner{live: liveHeap, set: debug.SetGCPercent, current: gcPercent}
	t.set(gcPercent)
	t.arm()
	return t
}

// gcTuner adjusts the target after each collection. Its methods run on the
// finalizer goroutine, one at a time.
type gcTuner struct {
	live    func() uint64
	set     func(int) int
	current int
	stopped atomic.Bool
}

// gcSentinel is allocated to be collected: its finalizer runs after the
// collection that found it unreachable. It holds a pointer, so the tiny
// allocator, whose objects' finalizers may never run, does not take it.
type gcSentinel struct{ t *gcTuner }

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{t}, func(s *gcSentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.tune()
		s.t.arm()
	})
}

func (t *gcTuner) tune() {
	if p := gcPercentFor(t.live()); p != t.current {
		t.set(p)
		t.current = p
	}
}

// liveHeap is the heap the last collection found live.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
