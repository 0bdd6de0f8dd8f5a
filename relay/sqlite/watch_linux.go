package sqlite

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watcher calls fn whenever the file at path is written, by any process,
// using inotify on its directory (the file itself may not exist yet, and
// SQLite recreates the write-ahead log after a checkpoint truncates it).
type watcher struct {
	f  *os.File
	wg sync.WaitGroup
}

func watch(path string, fn func()) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	dir, name := filepath.Dir(path), []byte(filepath.Base(path))
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MODIFY|unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	// A non-blocking descriptor in an *os.File is served by the runtime
	// poller, so Close interrupts the blocked Read.
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify")}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := w.f.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					fn() // fall back to the receivers' safety poll
				}
				return
			}
			hit := false
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				if ev.Mask&unix.IN_Q_OVERFLOW != 0 || bytes.Equal(bytes.TrimRight(nameBytes, "\x00"), name) {
					hit = true
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
			if hit {
				fn()
			}
		}
	}()
	return w, nil
}

func (w *watcher) close() {
	w.f.Close()
	w.wg.Wait()
}
