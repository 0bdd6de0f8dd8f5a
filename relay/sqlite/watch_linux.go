package sqlite

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// watcher calls fn whenever the file at path is written, by any process,
// using inotify. Unread events for the file coalesce, so a burst of writes
// costs the watcher one wake-up.
type watcher struct {
	f  *os.File
	wg sync.WaitGroup
}

func watch(path string, fn func()) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", path, err)
	}
	// A non-blocking descriptor in an *os.File is served by the runtime
	// poller, so Close interrupts the blocked Read.
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify")}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 64*unix.SizeofInotifyEvent)
		for {
			if _, err := w.f.Read(buf); err != nil {
				if !errors.Is(err, os.ErrClosed) {
					fn() // receivers fall back to their safety poll
				}
				return
			}
			fn()
		}
	}()
	return w, nil
}

func (w *watcher) close() {
	w.f.Close()
	w.wg.Wait()
}
