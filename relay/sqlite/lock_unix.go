//go:build unix

package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is the write lock hookbridge processes sharing a queue file take
// around each write transaction (flock on the notification file). SQLite
// has its own lock, but a writer that finds it held sleeps in SQLite's busy
// handler for 1, 2, 5, 10, 25 ms and more, a long tail for a queue whose
// ingress and workers write hundreds of times a second. A writer that finds
// this lock held waits in the kernel instead (a blocking flock on its own
// goroutine), which hands the lock over the moment its holder lets go;
// SQLite's lock still guards against other programs.
//
// One process's writers take it one at a time (under the queue's writeMu),
// so at most one wait is in the kernel. A wait that outlives its caller's
// timeout or context is left there and handed to the next caller; if none
// comes by the time it gets the lock, it lets go at once.
type fileLock struct {
	f *os.File

	mu      sync.Mutex
	pending *lockWait // a blocking flock still in the kernel
}

// lockWait is one blocking flock.
type lockWait struct {
	done chan struct{} // closed once it returned
	err  error
	// wanted says a caller waits for it (under fileLock.mu); a wait that
	// gets the lock when nobody wants it lets go.
	wanted bool
}

// lock takes the lock, waiting up to timeout (or until ctx ends).
func (l *fileLock) lock(ctx context.Context, timeout time.Duration) error {
	l.mu.Lock()
	w := l.pending
	if w == nil {
		err := flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			l.mu.Unlock()
			return l.failed(err)
		}
		// Its own descriptor, for the same open file: the wait may
		// outlive the queue's, which Close closes. (Close-on-exec, as
		// Go's own are: a child process must not keep the lock.)
		fd, err := unix.FcntlInt(l.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			l.mu.Unlock()
			return l.failed(err)
		}
		w = &lockWait{done: make(chan struct{})}
		l.pending = w
		go l.wait(w, fd)
	}
	w.wanted = true
	l.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-w.done:
		return l.failed(w.err)
	case <-t.C:
		err = fmt.Errorf("database busy: another process held the write lock for more than busy_timeout (%s)", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-w.done: // it returned while wanted: the lock is this caller's
		return l.failed(w.err)
	default:
		w.wanted = false
		return err
	}
}

// wait blocks in flock on fd, a duplicate of the lock file's descriptor,
// and closes it after: the lock belongs to the open file, which the queue's
// own descriptor keeps open.
func (l *fileLock) wait(w *lockWait, fd int) {
	err := flock(fd, unix.LOCK_EX)
	l.mu.Lock()
	l.pending = nil
	w.err = err
	if err == nil && !w.wanted {
		flock(fd, unix.LOCK_UN)
	}
	close(w.done)
	l.mu.Unlock()
	unix.Close(fd)
}

// failed says which file a flock failed on (nil if it did not).
func (l *fileLock) failed(err error) error {
	if err != nil {
		return fmt.Errorf("lock %s: %w", l.f.Name(), err)
	}
	return nil
}

func (l *fileLock) unlock() error {
	return flock(int(l.f.Fd()), unix.LOCK_UN)
}

// flock is unix.Flock, retried when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
