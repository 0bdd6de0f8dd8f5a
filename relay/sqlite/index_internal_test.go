package sqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
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
// enqueue time of the first message this process has not scanned
// otherwise, and an error, never a guess, when the queue cannot be read (a
// guess of now would prune entries a waiting message may still repeat).
func TestWindowCutoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := openInternal(t)
	windowCutoff := func(ctx context.Context, now int64) (int64, error) {
		q.writeMu.Lock()
		defer q.writeMu.Unlock()
		defer q.settle.hold()()
		return q.windowCutoff(ctx, q.settle, now)
	}
	now := time.Now().UnixNano()
	cutoff, err := windowCutoff(ctx, now)
	if want := now - int64(pruneSlack+q.cfg.BusyTimeout); err != nil || cutoff != want {
		t.Fatalf("empty queue: cutoff %d, %v; want %d", cutoff, err, want)
	}
	if err := q.SendBatch(ctx, []relay.Message{{ID: "a", SessionID: "k", Body: []byte("{}")}, {ID: "b", SessionID: "k", Body: []byte("{}")}}); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour).UnixNano()
	cutoff, err = windowCutoff(ctx, later)
	if err != nil || cutoff < now || cutoff > time.Now().UnixNano() {
		t.Fatalf("two messages not scanned: cutoff %v after the test began, %v; want the first one's enqueue time", time.Duration(cutoff-now), err)
	}
	// A receive scans both; b still waits behind a, locked.
	if got, err := q.Receive(ctx, 1); err != nil || len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("Receive: %v, %v; want a", got, err)
	}
	cutoff, err = windowCutoff(ctx, later)
	if want := later - int64(pruneSlack+q.cfg.BusyTimeout); err != nil || cutoff != want {
		t.Fatalf("every message scanned: cutoff %v before the given now, %v; want %v (a waiting message no longer holds the window)",
			time.Duration(later-cutoff), err, pruneSlack+q.cfg.BusyTimeout)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := windowCutoff(cancelled, now); err == nil {
		t.Fatal("a failed read gave a cutoff")
	}
}

// A scan cut short (a backlog longer than refreshRows) checks only the rows
// it read: the cutoff stops at the first row it did not, even while an
// earlier row it did read still waits.
func TestWindowCutoffAfterAPartialScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := openInternal(t)
	send := func(from, to int) {
		msgs := make([]relay.Message, 0, to-from)
		for i := from; i < to; i++ {
			msgs = append(msgs, relay.Message{ID: fmt.Sprintf("m%d", i), SessionID: "k", Body: []byte("{}")})
		}
		if err := q.SendBatch(ctx, msgs); err != nil {
			t.Fatal(err)
		}
	}
	send(0, refreshRows) // what one scan reads
	time.Sleep(10 * time.Millisecond)
	before := time.Now().UnixNano()
	send(refreshRows, refreshRows+10)
	if got, err := q.Receive(ctx, 1); err != nil || len(got) != 1 || got[0].ID != "m0" {
		t.Fatalf("Receive: %v, %v; want m0", got, err)
	}
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	if q.idx.lastSeq != refreshRows {
		t.Fatalf("the scan read up to row %d, want %d", q.idx.lastSeq, refreshRows)
	}
	var next int64
	func() {
		defer q.settle.hold()()
		if err := q.settle.row(ctx, `SELECT enqueued_at FROM queue WHERE seq = ?`, []any{refreshRows + 1}, &next); err != nil {
			t.Fatal(err)
		}
	}()
	defer q.settle.hold()()
	cutoff, err := q.windowCutoff(ctx, q.settle, time.Now().Add(time.Hour).UnixNano())
	if err != nil || cutoff != next || cutoff < before {
		t.Errorf("cutoff %v before the second batch, %v; want that batch's enqueue time, the first row not scanned (%d)",
			time.Duration(before-cutoff), err, next)
	}
}

// A session whose head waits, its delivery retried for as long as the
// retries last, holds neither the duplicate window nor a duplicate behind
// it: the receiver's scan drops the duplicate when it finds it, and once
// everything waiting has been scanned the entries of the messages that
// left are pruned when their window ends, from the log and from memory.
// Before, pruning stopped at the oldest waiting message, and the log and
// every worker's memory grew with everything delivered meanwhile.
func TestWindowNotHeldByAWaitingSession(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := openInternal(t)
	mustSend(t, q, dupMsg("head", "stuck"))
	if got, err := q.Receive(ctx, 1); err != nil || len(got) != 1 || got[0].ID != "head" {
		t.Fatalf("Receive: %v, %v; want head", got, err)
	} // and never settled: its lock lasts the test
	mustSend(t, q, dupMsg("x", "stuck"), dupMsg("x", "stuck"))
	const others = 20
	for i := range others {
		mustSend(t, q, dupMsg(fmt.Sprintf("o%d", i), fmt.Sprintf("s%d", i)))
	}
	for done := 0; done < others; {
		got, err := q.Receive(ctx, others)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range got {
			if m.SessionID == "stuck" {
				t.Fatalf("received %s of the session whose head is locked", m.ID)
			}
			if err := q.Complete(ctx, m); err != nil {
				t.Fatal(err)
			}
			done++
		}
	}
	if active, _, err := q.Counts(ctx); err != nil || active != 2 {
		t.Errorf("%d messages waiting, %v; want 2 (head, and x once: its repeat dropped when scanned)", active, err)
	}
	entries := func() (n int) {
		defer q.read.hold()()
		if err := q.read.row(ctx, `SELECT count(*) FROM dedup_log`, nil, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := entries(); n != others {
		t.Fatalf("%d entries in the duplicate window's log, want %d", n, others)
	}
	// Past every window: only the scanned, waiting head and x remain.
	later := time.Now().Add(q.cfg.DuplicateWindow + pruneSlack + q.cfg.BusyTimeout + time.Minute)
	if err := q.pruneWindow(ctx, later); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 0 {
		t.Errorf("%d entries left in the log after every window ended, want 0", n)
	}
	q.writeMu.Lock()
	cutoff, err := func() (int64, error) {
		defer q.settle.hold()()
		return q.windowCutoff(ctx, q.settle, later.UnixNano())
	}()
	if err == nil {
		q.idx.prune(cutoff)
	}
	seen, first := len(q.idx.seen.ids), len(q.idx.first)
	q.writeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if seen != 0 || first != 0 {
		t.Errorf("the receiver still remembers %d IDs that left and %d let through, want none", seen, first)
	}
}
