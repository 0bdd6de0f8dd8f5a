// Package sqlitetest opens embedded queues for tests: a fresh file in the
// test's temporary directory (or a given path), with the queue's background
// work running, closed when the test ends.
package sqlitetest

import (
	"context"
	"os"
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

// NeedsPrivilege skips a test that cannot run without root (mounting a small
// volume, making a file immutable), saying why; with
// HOOKBRIDGE_REQUIRE_ROOT=1 (as CI sets it) it fails instead, so a fault
// test cannot silently stop running.
func NeedsPrivilege(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("HOOKBRIDGE_REQUIRE_ROOT") == "1" {
		t.Fatal(why + "; HOOKBRIDGE_REQUIRE_ROOT=1 requires this test to run")
	}
	t.Skip(why + "; run as root, or set HOOKBRIDGE_REQUIRE_ROOT=1 to make this a failure")
}
