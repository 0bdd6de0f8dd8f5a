package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openFiles counts this process's open files under dir.
func openFiles(t *testing.T, dir string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("open files are counted through /proc/self/fd: %v", err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(target, dir) {
			n++
		}
	}
	return n
}

// TestFailedStartClosesWhatItOpened: a command whose last listener cannot
// bind has opened its queue (and the ingress its listener) by then; it
// returns the error with every part it built closed.
func TestFailedStartClosesWhatItOpened(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	for _, tt := range []struct {
		name string
		args []string // the busy address is the last argument's value
	}{
		{"worker", []string{"worker", "--deliver", "http://127.0.0.1:9/x", "--admin-listen"}},
		{"ingress", []string{"ingress", "--listen", "127.0.0.1:0", "--insecure-allow-unauthenticated", "--admin-listen"}},
		{"dev", []string{"dev", "--listen", "127.0.0.1:0", "--deliver", "http://127.0.0.1:9/x", "--admin-listen"}},
		{"console", []string{"console", "--listen"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			queue := sqliteWith(t)
			args := append(append([]string{}, tt.args...), busy.Addr().String(), "--queue", queue)
			_, _, err := runCLI(t, nil, args...)
			if err == nil || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("%v: %v, want the listener's error", args, err)
			}
			if n := openFiles(t, filepath.Dir(strings.TrimPrefix(queue, "sqlite:"))); n != 0 {
				t.Errorf("%d files of the queue still open after the failed start", n)
			}
		})
	}
}
