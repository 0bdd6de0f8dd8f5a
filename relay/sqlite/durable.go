package sqlite

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// walSyncer makes commits durable outside the write lock. Sends commit with
// synchronous=NORMAL, which writes the transaction to the write-ahead log
// without an fsync, and release the lock; then each waits for an fsync of
// the log that began after its commit. Frames are appended in commit order,
// so one fsync covers every commit before it, and the next batch's inserts
// run while the previous batch's fsync is in flight: group commit with a
// pipelined flush. A send is acknowledged only after its fsync, exactly as
// with synchronous=FULL.
//
// The syncer's own descriptor of the log also tells when the log was deleted
// or replaced under the running processes (see gone): SQLite would go on
// writing to the unlinked file, and everything committed there since the
// last checkpoint would vanish with the process.
type walSyncer struct {
	f       *os.File
	path    string
	opened  os.FileInfo // the log as opened, to tell when its path names another file
	metrics *Metrics

	mu      sync.Mutex
	cond    *sync.Cond
	written uint64 // commits whose frames are in the log
	synced  uint64 // commits covered by a completed fsync
	syncing bool
	closed  bool
	// failed is the first fsync that failed. The kernel reports a failed
	// writeback once and may drop the dirty pages, so a later fsync that
	// succeeds says nothing about what the failed one covered: from then on
	// no commit is acknowledged (see errSyncFailed).
	failed error
}

func newWALSyncer(path string, metrics *Metrics) (*walSyncer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open write-ahead log %s: %w", path, err)
	}
	s := &walSyncer{f: f, path: path, metrics: metrics}
	if fi, err := f.Stat(); err == nil {
		s.opened = fi
	}
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
		if s.failed != nil {
			return s.failed
		}
		if s.closed {
			return fmt.Errorf("fsync write-ahead log: %w", relay.ErrClosed)
		}
		if s.syncing {
			s.cond.Wait()
			continue
		}
		s.syncing = true
		target := s.written
		s.mu.Unlock()
		start := time.Now()
		err := datasync(s.f)
		s.metrics.fsync(time.Since(start))
		s.mu.Lock()
		s.syncing = false
		if err != nil && s.failed == nil {
			s.failed = fmt.Errorf("%w: %w", errSyncFailed, err)
		}
		s.cond.Broadcast()
		if s.failed != nil {
			return s.failed
		}
		s.synced = max(s.synced, target)
	}
	return nil
}

// datasync is how the log is fsynced (a variable so that tests can make it
// fail).
var datasync = datasyncFile

// errSyncFailed says an fsync of the write-ahead log failed: the commits it
// covered may not be on disk, and no later fsync can tell.
var errSyncFailed = errors.New("an fsync of the write-ahead log failed, so commits since the last good one may not be on disk")

// errWALGone says the write-ahead log was deleted or replaced while the
// queue was open.
var errWALGone = errors.New("the write-ahead log was deleted or replaced while the queue was open")

// gone reports whether the log file the processes write to is no longer the
// one at its path: unlinked (no links left: one fstat, cheap enough for
// every commit), or, with byPath, the path now names another file.
func (s *walSyncer) gone(byPath bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil // the queue closed: the log is its to remove
	}
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errWALGone, s.path, err)
	}
	if n, ok := links(fi); ok && n == 0 {
		return fmt.Errorf("%w: %s has no links left", errWALGone, s.path)
	}
	if !byPath {
		return nil
	}
	pi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errWALGone, s.path, err)
	}
	if s.opened != nil && !os.SameFile(s.opened, pi) {
		return fmt.Errorf("%w: %s is now another file", errWALGone, s.path)
	}
	return nil
}

// size is the log's current length.
func (s *walSyncer) size() int64 {
	fi, err := s.f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}

func (s *walSyncer) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.syncing {
		s.cond.Wait()
	}
	if s.closed {
		return nil
	}
	// Make what was committed durable for the sends still waiting on it, so
	// they can be acknowledged: the queue is closing, not failing.
	var err error
	if s.synced < s.written && s.failed == nil {
		start := time.Now()
		err = datasync(s.f)
		s.metrics.fsync(time.Since(start))
		if err == nil {
			s.synced = s.written
		}
	}
	s.closed = true
	s.cond.Broadcast()
	return errors.Join(err, s.f.Close())
}
