//go:build unix

package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openLocks opens the same file n times: each open file is its own flock
// holder, as each process sharing a queue is.
func openLocks(t testing.TB, n int) []*fileLock {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.db-notify")
	var out []*fileLock
	for range n {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		out = append(out, &fileLock{f: f})
	}
	return out
}

// A writer waiting for the lock gets it when its holder lets go, and then
// holds it.
func TestFileLockHandsOver(t *testing.T) {
	l := openLocks(t, 2)
	if err := l[0].lock(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		if err := l[1].lock(context.Background(), 5*time.Second); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	time.Sleep(50 * time.Millisecond) // the waiter is in the kernel by now
	released := time.Now()
	if err := l[0].unlock(); err != nil {
		t.Fatal(err)
	}
	// Woken by the kernel, not by its 5s timeout; the bound leaves room for
	// a busy machine running the race detector.
	if d := (<-got).Sub(released); d > 500*time.Millisecond {
		t.Fatalf("the waiter took the lock %s after it was let go", d)
	}
	// It holds it: the first cannot take it back.
	if err := flock(int(l[0].f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("lock taken while the waiter holds it: %v", err)
	}
	l[1].unlock()
}

// A wait cut short by its timeout or context reports so, and does not keep
// the lock when it gets it later with nobody wanting it; a later caller
// takes over a wait still in the kernel.
func TestFileLockAbandonedWait(t *testing.T) {
	l := openLocks(t, 3)
	holder, waiter, other := l[0], l[1], l[2]
	if err := holder.lock(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	err := waiter.lock(context.Background(), 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "database busy") {
		t.Fatalf("lock held elsewhere: %v, want a busy timeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waiter.lock(ctx, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("lock with a cancelled context: %v", err)
	}
	// The holder lets go; the abandoned wait takes the lock and lets go.
	holder.unlock()
	if !eventually(func() bool { return flock(int(other.f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil }) {
		t.Fatal("an abandoned wait kept the lock")
	}
	// Now a wait is left in the kernel behind other; the next caller
	// takes it over and gets the lock once other lets go.
	if err := waiter.lock(context.Background(), 20*time.Millisecond); err == nil {
		t.Fatal("lock held elsewhere: no error")
	}
	done := make(chan error, 1)
	go func() { done <- waiter.lock(context.Background(), 5*time.Second) }()
	time.Sleep(20 * time.Millisecond)
	other.unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := flock(int(holder.f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("lock taken while the waiter holds it: %v", err)
	}
	waiter.unlock()
	if !eventually(func() bool { return holder.lock(context.Background(), time.Second) == nil }) {
		t.Fatal("the lock was not free after its last holder let go")
	}
}

// A wait still in the kernel when its file is closed ends with the lock
// free.
func TestFileLockWaitOutlivesClose(t *testing.T) {
	l := openLocks(t, 2)
	if err := l[0].lock(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l[1].lock(context.Background(), 10*time.Millisecond); err == nil {
		t.Fatal("lock held elsewhere: no error")
	}
	l[1].f.Close()
	l[0].unlock()
	path := l[0].f.Name()
	if !eventually(func() bool {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return false
		}
		defer f.Close()
		return flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
	}) {
		t.Fatal("a wait whose file was closed kept the lock")
	}
}

func eventually(f func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if f() {
			return true
		}
	}
	return false
}

// BenchmarkFileLockWait: one writer (a worker, say) takes the lock for
// 200µs every 300µs; another (the ingress) needs it at odd moments, holds
// it 50µs, and reports how long it waited: wait-µs is the mean, p99-wait-µs
// the 99th percentile.
func BenchmarkFileLockWait(b *testing.B) {
	l := openLocks(b, 2)
	busy, other := l[0], l[1]
	spin := func(d time.Duration) {
		for t := time.Now(); time.Since(t) < d; {
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			if err := busy.lock(context.Background(), 5*time.Second); err != nil {
				b.Error(err)
				return
			}
			spin(200 * time.Microsecond)
			busy.unlock()
			spin(100 * time.Microsecond)
		}
	})
	waits := make([]time.Duration, 0, b.N)
	for i := range b.N {
		spin(time.Duration(i%7) * 50 * time.Microsecond)
		start := time.Now()
		if err := other.lock(context.Background(), 5*time.Second); err != nil {
			b.Fatal(err)
		}
		waits = append(waits, time.Since(start))
		spin(50 * time.Microsecond)
		other.unlock()
	}
	stop.Store(true)
	wg.Wait()
	slices.Sort(waits)
	var sum time.Duration
	for _, w := range waits {
		sum += w
	}
	b.ReportMetric(float64(sum.Microseconds())/float64(len(waits)), "wait-µs")
	b.ReportMetric(float64(waits[len(waits)*99/100].Microseconds()), "p99-wait-µs")
}

// BenchmarkFileLockHandOver: two writers, each its own open file as two
// processes are, take turns holding the lock for 100µs. idle-µs/op is how
// long the lock lay free between holders, on average.
func BenchmarkFileLockHandOver(b *testing.B) {
	const hold = 100 * time.Microsecond
	l := openLocks(b, 2)
	var wg sync.WaitGroup
	start := time.Now()
	for i, x := range l {
		wg.Go(func() {
			for range (b.N + 1 - i) / 2 {
				if err := x.lock(context.Background(), 5*time.Second); err != nil {
					b.Error(err)
					return
				}
				for t := time.Now(); time.Since(t) < hold; {
				}
				x.unlock()
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64((time.Since(start)-time.Duration(b.N)*hold).Microseconds())/float64(b.N), "idle-µs/op")
}
