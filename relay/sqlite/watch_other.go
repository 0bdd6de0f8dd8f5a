//go:build !linux

package sqlite

import "errors"

// watcher is not available here: receivers poll for writes by other
// processes every 50ms instead.
type watcher struct{}

func watch(string, func()) (*watcher, error) {
	return nil, errors.New("file notifications are implemented on Linux only")
}

func (w *watcher) close() {}
