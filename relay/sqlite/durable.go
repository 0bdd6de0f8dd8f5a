package sqlite

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"
)

// walSyncer makes commits durable outside the write lock. Sends commit with
// synchronous=NORMAL, which writes the transaction to the write-ahead log
// without an fsync, and release the lock; then each waits for an fsync of
// the log that began after its commit. Frames are appended in commit order,
// so one fsync covers every commit before it, and the next batch's inserts
// run while the previous batch's fsync is in flight: group commit with a
// pipelined flush. A send is acknowledged only after its fsync, exactly as
// with synchronous=FULL.
type walSyncer struct {
	f *os.File

	mu      sync.Mutex
	cond    *sync.Cond
	written uint64 // commits whose frames are in the log
	synced  uint64 // commits covered by a completed fsync
	syncing bool
}

func newWALSyncer(path string) (*walSyncer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open write-ahead log %s: %w", path, err)
	}
	s := &walSyncer{f: f}
	s.cond = sync.NewCond(&s.mu)
	return s, nil
}

// committed records a commit (call it with the write lock still held, so
// generations follow log order) and returns its generation.
func (s *walSyncer) committed() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written++
	return s.written
}

// wait returns once generation gen is durable. Concurrent waiters share
// fsyncs: whoever finds none running starts one covering everything written
// so far.
func (s *walSyncer) wait(gen uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.synced < gen {
		if s.syncing {
			s.cond.Wait()
			continue
		}
		s.syncing = true
		target := s.written
		s.mu.Unlock()
		err := datasync(s.f)
		s.mu.Lock()
		s.syncing = false
		s.cond.Broadcast()
		if err != nil {
			return fmt.Errorf("fsync write-ahead log: %w", err)
		}
		s.synced = max(s.synced, target)
	}
	return nil
}

func (s *walSyncer) close() error { return s.f.Close() }

// checkpointEvery is how often the background checkpointer copies the
// write-ahead log into the database. Commits never checkpoint themselves
// (wal_autocheckpoint is off), so no acknowledged send waits for one.
const checkpointEvery = time.Second

// checkpointLoop runs passive checkpoints until the queue closes. A passive
// checkpoint never blocks writers or readers; once it has copied every frame,
// the next writer restarts the log from its beginning, keeping it small.
func (q *Queue) checkpointLoop() {
	defer q.bg.Done()
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-q.closing:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var busy, logFrames, done int
		err := q.ckpt.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &done)
		cancel()
		if err != nil {
			q.log.Warn("sqlite queue: checkpoint failed; will retry", "error", err)
		}
	}
}
