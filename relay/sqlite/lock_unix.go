//go:build unix

package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is the write lock hookbridge processes sharing a queue file take
// around each write transaction (flock on the notification file). SQLite
// has its own lock, but a writer that finds it held sleeps in SQLite's busy
// handler for 1, 2, 5, 10, 25 ms and more, a long tail for a queue whose
// ingress and workers write hundreds of times a second. This lock is polled
// at sub-millisecond steps instead, so the hand-over between processes costs
// well under a millisecond; SQLite's lock still guards against other programs.
type fileLock struct{ f *os.File }

// lock takes the lock, waiting up to timeout (or until ctx ends).
func (l fileLock) lock(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 20 * time.Microsecond
	for {
		err := unix.Flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return fmt.Errorf("lock %s: %w", l.f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("database busy: another process held the write lock for more than busy_timeout (%s)", timeout)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		wait = min(2*wait, time.Millisecond)
	}
}

func (l fileLock) unlock() error {
	for {
		err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
