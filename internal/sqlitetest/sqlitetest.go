// Package sqlitetest opens embedded queues for tests: a fresh file in the
// test's temporary directory (or a given path), with the queue's background
// work running, closed when the test ends.
package sqlitetest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// Open opens the queue cfg describes, in a new file under t.TempDir() when
// cfg.Path is empty, runs its background work (sqlite.Queue.Run) and closes
// it when the test ends.
func Open(t testing.TB, cfg sqlite.Config) *sqlite.Queue {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "queue.db")
	}
	q, err := sqlite.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("open sqlite queue: %v", err)
	}
	stop := testrun.Start(t, q.Run)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("sqlite queue background work: %v", err)
		}
		if err := q.Close(); err != nil {
			t.Errorf("close sqlite queue: %v", err)
		}
	})
	return q
}
