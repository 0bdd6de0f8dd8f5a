//go:build unix

package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/relay"
)

// A writer that finds another process holding the queue's write lock waits
// for it, and the wait is recorded under its own writer: a send's under
// "send", a claim's under "receive".
func TestLockWaitRecordedByWriter(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q.db")
	reg := prometheus.NewRegistry()
	const busy = 200 * time.Millisecond
	q, err := Open(ctx, Config{Path: path, Metrics: NewMetrics(reg), BusyTimeout: busy}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	other := openAt(t, path, 0) // another process on the same file

	const held = 50 * time.Millisecond
	// hold takes the other queue's lock and lets go after held; the
	// function it returns waits until it has.
	hold := func(held time.Duration) (released func()) {
		t.Helper()
		if err := other.lock.lock(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(held)
			other.lock.unlock()
		}()
		return func() { <-done }
	}
	const name = "hookbridge_queue_lock_wait_seconds"
	waited := func(writer string) float64 { return metrictest.SampleSum(t, reg, name, "writer", writer) }

	released := hold(held)
	if err := q.SendBatch(ctx, []relay.Message{dupMsg("m1", "s1")}); err != nil {
		t.Fatal(err)
	}
	released()
	if got := waited("send"); got < 0.8*held.Seconds() {
		t.Errorf("a send behind a lock held %v waited %.3fs by its metric", held, got)
	}
	if got := waited("receive"); got != 0 {
		t.Errorf("receive waits %.3fs before any receive", got)
	}

	released = hold(held)
	got, _ := receiveIDs(t, q, 5*time.Second)
	released()
	if len(got) != 1 {
		t.Fatalf("received %d messages, want 1", len(got))
	}
	if got := waited("receive"); got < 0.8*held.Seconds() {
		t.Errorf("a claim behind a lock held %v waited %.3fs by its metric", held, got)
	}

	// A send that gives up after busy_timeout (the sender gets 503) is
	// counted with its wait too.
	before := waited("send")
	released = hold(3 * busy)
	err = q.SendBatch(ctx, []relay.Message{dupMsg("m2", "s1")})
	released()
	if err == nil {
		t.Fatal("a send behind a lock held past busy_timeout succeeded")
	}
	if got := waited("send") - before; got < 0.8*busy.Seconds() {
		t.Errorf("a send that gave up after busy_timeout %v waited %.3fs by its metric", busy, got)
	}
}
