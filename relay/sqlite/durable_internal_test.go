package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// A failed fsync fails every commit it covered and every commit after it,
// even when the next fsync succeeds: the kernel reports a failed writeback
// once, so a later success says nothing about the pages the failed one
// covered. Commit 2 here was written before the failing fsync began; a
// syncer that only told the fsync's own waiter would acknowledge it on the
// next, successful fsync.
func TestFailedFsyncIsFinal(t *testing.T) {
	s, err := newWALSyncer(filepath.Join(t.TempDir(), "q.db-wal"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	started, finish := make(chan struct{}), make(chan struct{})
	calls := 0
	datasync = func(*os.File) error {
		calls++
		if calls == 1 {
			close(started)
			<-finish
			return syscall.EIO
		}
		return nil
	}
	t.Cleanup(func() { datasync = datasyncFile })

	gen1 := s.committed()
	first := make(chan error, 1)
	go func() { first <- s.wait(gen1) }()
	<-started
	gen2 := s.committed()
	second := make(chan error, 1)
	go func() { second <- s.wait(gen2) }()
	time.Sleep(20 * time.Millisecond) // the second waiter waits on the running fsync
	close(finish)

	for i, ch := range []chan error{first, second} {
		if err := <-ch; !errors.Is(err, errSyncFailed) || !errors.Is(err, syscall.EIO) {
			t.Errorf("commit %d: wait = %v, want the failed fsync's EIO", i+1, err)
		}
	}
	if err := s.wait(s.committed()); !errors.Is(err, errSyncFailed) {
		t.Errorf("a commit after the failure: wait = %v, want it refused", err)
	}
	if calls != 1 {
		t.Errorf("%d fsyncs, want only the failed one: none after it may acknowledge anything", calls)
	}
}

// A queue whose log fsync failed refuses every later send, and reports
// itself unready with the cause, until it is reopened.
func TestQueueStopsAfterFailedFsync(t *testing.T) {
	ctx := context.Background()
	q := openInternal(t)
	datasync = func(*os.File) error { return syscall.EIO }
	t.Cleanup(func() { datasync = datasyncFile })
	msg := []relay.Message{{ID: "m1", Body: []byte(`{}`)}}
	if err := q.SendBatch(ctx, msg); !errors.Is(err, relay.ErrUnavailable) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("send with a failing fsync: %v, want unavailable with EIO", err)
	}
	datasync = datasyncFile // the disk "recovers": nothing may pass for acknowledged
	msg[0].ID = "m2"
	if err := q.SendBatch(ctx, msg); !errors.Is(err, relay.ErrUnavailable) {
		t.Errorf("send after the failed fsync: %v, want it refused", err)
	}
	if err := q.Ready(ctx); err == nil || !strings.Contains(err.Error(), "fsync of the write-ahead log failed") || !strings.Contains(err.Error(), "restart hookbridge") {
		t.Errorf("Ready after a failed fsync: %v, want the cause and what to do", err)
	}
}
