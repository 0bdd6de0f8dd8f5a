package sqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// heapAfterGC returns the live heap and the part of it the collector
// scans, after a collection.
func heapAfterGC() (live, scan uint64) {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/heap:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// The duplicate window holds the IDs of the last window's messages (over a
// million at 2,000 events a second) in about 60 bytes each, none of it
// memory the collector scans; with the IDs as string keys it took 104
// bytes, 56 of them scanned on every cycle.
func TestDuplicateWindowMemory(t *testing.T) {
	const n = 200_000
	x := newIndex(10 * time.Minute)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) // an event ID's shape
	}
	live0, scan0 := heapAfterGC()
	now := time.Now().UnixNano()
	for i, id := range ids {
		x.left(id, int64(i), now+int64(i)*int64(time.Millisecond))
	}
	live1, scan1 := heapAfterGC()
	runtime.KeepAlive(x)
	runtime.KeepAlive(ids)
	perID := (float64(live1) - float64(live0)) / n
	scanned := (float64(scan1) - float64(scan0)) / n
	t.Logf("%.1f bytes an ID, %.2f of them scanned, in %d buckets", perID, scanned, len(x.seen.buckets))
	if perID > 80 {
		t.Errorf("%.1f bytes an ID, want at most 80", perID)
	}
	if scanned > 2 {
		t.Errorf("%.2f scanned bytes an ID, want none (at most 2: other tests' garbage)", scanned)
	}
}

// The window answers as a map of each ID's latest window end pruned
// exactly at each cutoff would, for every message that can still arrive
// (enqueued at or after the cutoff), with IDs added out of order; it keeps
// no bucket whose windows all ended by the cutoff, and no ID a bucket's
// width past its window.
func TestSeenWindowMatchesExactModel(t *testing.T) {
	t.Parallel()
	const window = 16 * int64(time.Second)
	w := newSeenWindow(time.Duration(window))
	model := map[idKey]int64{}
	rng := rand.New(rand.NewPCG(1, 2))
	key := func() idKey { return keyOf(fmt.Sprint(rng.IntN(5000))) }
	var now, cutoff int64 = 1e12, 0
	for step := range 200_000 {
		now += rng.Int64N(int64(time.Millisecond))
		switch r := rng.IntN(100); {
		case r < 50: // a message leaves; enqueued up to 5 s ago, so out of order
			k, exp := key(), now-rng.Int64N(5*int64(time.Second))+window
			w.add(k, exp)
			model[k] = max(model[k], exp)
		case r < 52:
			// Rising only: when the cutoff moves back (a clock step), the
			// buckets may still hold an ID the exact window dropped, and answer
			// true where it says false, a repeat within the window all the same.
			cutoff = max(cutoff, now-rng.Int64N(2*int64(time.Second)))
			w.prune(cutoff)
			for k, exp := range model {
				if exp <= cutoff {
					delete(model, k)
				}
			}
			if len(w.buckets) > 0 && w.buckets[0].end <= cutoff {
				t.Fatalf("step %d: bucket ending %d kept past cutoff %d", step, w.buckets[0].end, cutoff)
			}
		default:
			k, enq := key(), cutoff+rng.Int64N(now-cutoff+window)
			if got, want := w.repeats(k, enq), enq < model[k]; got != want {
				t.Fatalf("step %d: repeats(enq %d) = %v, the exact window says %v", step, enq, got, want)
			}
		}
	}
	for _, exp := range w.ids {
		if exp <= cutoff-w.width {
			t.Fatalf("an ID whose window ended %v before the last cutoff is kept", time.Duration(cutoff-exp))
		}
	}
	if n := len(w.buckets); n > seenBuckets+2 {
		t.Errorf("%d buckets for a window of %d", n, seenBuckets)
	}
}

// The duplicate window's cutoff: a while before now on an empty queue, the
// oldest waiting message's enqueue time otherwise, and an error, never a
// guess, when the queue cannot be read (a guess of now would prune entries
// a waiting message may still repeat).
func TestWindowCutoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "q.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	windowCutoff := func(ctx context.Context, now int64) (int64, error) {
		defer q.settle.hold()()
		return q.windowCutoff(ctx, q.settle, now)
	}
	now := time.Now().UnixNano()
	cutoff, err := windowCutoff(ctx, now)
	if want := now - int64(pruneSlack+q.cfg.BusyTimeout); err != nil || cutoff != want {
		t.Fatalf("empty queue: cutoff %d, %v; want %d", cutoff, err, want)
	}
	if err := q.SendBatch(ctx, []relay.Message{{ID: "a", Body: []byte("{}")}}); err != nil {
		t.Fatal(err)
	}
	cutoff, err = windowCutoff(ctx, time.Now().Add(time.Hour).UnixNano())
	if err != nil || cutoff < now || cutoff > time.Now().UnixNano() {
		t.Fatalf("one waiting message: cutoff %v after the test began, %v; want its enqueue time", time.Duration(cutoff-now), err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := windowCutoff(cancelled, now); err == nil {
		t.Fatal("a failed read gave a cutoff")
	}
}
