package sqlite

import (
	"context"
	"path/filepath"
	"testing"
)

// Pruning an empty duplicate window writes nothing: on an idle queue it
// would otherwise commit a page, and take every process's file lock, every
// pruneEvery.
func TestPruneEmptyWindowWritesNothing(t *testing.T) {
	ctx := context.Background()
	q, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "q.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	before := q.wal.committed()
	if err := q.pruneWindow(ctx); err != nil {
		t.Fatal(err)
	}
	if after := q.wal.committed(); after != before+1 {
		t.Errorf("pruning an empty window committed %d transactions, want none", after-before-1)
	}
}
