package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkerNumericFlags: a value the worker cannot honour as given is a
// usage error (exit status 2) naming the flag and its range, from the
// command line or the environment, before anything starts.
func TestWorkerNumericFlags(t *testing.T) {
	t.Parallel()
	queue := "sqlite:" + filepath.Join(t.TempDir(), "q.db")
	tests := []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--concurrency", "0"}, `invalid argument "0" for "--concurrency" flag: must be between 1 and 1024`},
		{nil, []string{"--concurrency", "-3"}, "must be between 1 and 1024"},
		{nil, []string{"--concurrency", "5000"}, "must be between 1 and 1024"},
		{[]string{"HOOKBRIDGE_CONCURRENCY=0"}, nil, "HOOKBRIDGE_CONCURRENCY"},
		{nil, []string{"--delivery-timeout", "0s"}, `"--delivery-timeout" flag: must be positive`},
		{nil, []string{"--min-backoff", "-1s"}, `"--min-backoff" flag: must be positive`},
		{nil, []string{"--max-backoff", "0"}, `"--max-backoff" flag: must be positive`},
		{nil, []string{"--shutdown-timeout", "0s"}, `"--shutdown-timeout" flag: must be positive`},
		{[]string{"HOOKBRIDGE_DELIVERY_TIMEOUT=soon"}, nil, "not a duration"},
		{nil, []string{"--min-backoff", "1m", "--max-backoff", "1s"}, "min backoff 1m0s exceeds max backoff 1s"},
	}
	for _, tt := range tests {
		args := append([]string{"worker", "--queue", queue, "--admin-listen", "127.0.0.1:0"}, tt.args...)
		_, stderr, code := runBinary(t, append(os.Environ(), tt.env...), args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want exit 2 mentioning %q", tt.env, tt.args, code, stderr, tt.want)
		}
	}
}
