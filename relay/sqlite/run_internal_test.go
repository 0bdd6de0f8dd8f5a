package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testwait"
)

// openInternal opens a queue in a new file, without its background work
// (Run), and closes it when the test ends.
func openInternal(t *testing.T) *Queue {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "q.db"), 0)
}

// Pruning an empty duplicate window writes nothing: on an idle queue it
// would otherwise commit a page, and take every process's file lock, every
// pruneEvery.
func TestPruneEmptyWindowWritesNothing(t *testing.T) {
	ctx := context.Background()
	q := openInternal(t)
	before := q.wal.committed()
	if err := q.pruneWindow(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if after := q.wal.committed(); after != before+1 {
		t.Errorf("pruning an empty window committed %d transactions, want none", after-before-1)
	}
}

// A readiness check answers by its deadline when the probe's fsync hangs,
// and checks that time out share one probe rather than starting more.
func TestReadyAnswersByItsDeadline(t *testing.T) {
	ctx := context.Background()
	q := openInternal(t)
	release := make(chan struct{})
	var syncs atomic.Int32
	datasync = func(*os.File) error {
		syncs.Add(1)
		<-release
		return nil
	}
	t.Cleanup(func() { datasync = datasyncFile })
	q.health.mu.Lock()
	q.health.lastOK = time.Time{} // no write succeeded lately: Ready probes
	q.health.mu.Unlock()

	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		start := time.Now()
		err := q.Ready(cctx)
		cancel()
		if took := time.Since(start); err == nil || took > time.Second {
			t.Fatalf("Ready with its probe's fsync hanging: %v after %v, want an error by the 100ms deadline", err, took)
		}
	}
	if n := syncs.Load(); n != 1 {
		t.Errorf("%d probe fsyncs started by 3 timed-out checks, want the one they share", n)
	}
	close(release) // from now on the fsyncs return at once
	testwait.Until(t, 5*time.Second, "Ready once the fsync returns", func() bool { return q.Ready(ctx) == nil })
}
