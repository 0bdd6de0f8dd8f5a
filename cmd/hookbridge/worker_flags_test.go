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

// TestIngressNumericFlags: the same for the public listener's settings,
// where a zero once silently meant the default (and some refusals named an
// internal setting, not the flag).
func TestIngressNumericFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	queue := "sqlite:" + filepath.Join(dir, "q.db")
	tests := []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--max-body-bytes", "0"}, `invalid argument "0" for "--max-body-bytes" flag: must be between 1 and`},
		{nil, []string{"--max-body-bytes", "-1"}, `"--max-body-bytes" flag: must be between 1 and`},
		{nil, []string{"--max-body-bytes-in-flight", "0"}, `"--max-body-bytes-in-flight" flag: must be between 1 and`},
		{nil, []string{"--max-concurrent-requests", "0"}, `"--max-concurrent-requests" flag: must be between 1 and`},
		{nil, []string{"--enqueue-timeout", "0s"}, `"--enqueue-timeout" flag: must be positive`},
		{nil, []string{"--enqueue-timeout", "-1s"}, `"--enqueue-timeout" flag: must be positive`},
		{[]string{"HOOKBRIDGE_ENQUEUE_TIMEOUT=0"}, nil, "HOOKBRIDGE_ENQUEUE_TIMEOUT"},
		{nil, []string{"--shutdown-timeout", "0s"}, `"--shutdown-timeout" flag: must be positive`},
		{nil, []string{"--batch-max-messages", "0"}, `"--batch-max-messages" flag: must be between 1 and`},
		{nil, []string{"--batch-linger", "2s"}, `"--batch-linger" flag: must be between 0s and 1s`},
		{nil, []string{"--batch-linger", "-1ms"}, `"--batch-linger" flag: must be between 0s and 1s`},
		{nil, []string{"--drain-delay", "-1s"}, `"--drain-delay" flag: must be between 0s and`},
		{nil, []string{"--rate-burst", "-1"}, `"--rate-burst" flag: must be between 0 and`},
		{nil, []string{"--rate-limit", "-1"}, "--rate-limit -1: must not be negative"},
		{nil, []string{"--spool-after", "0s"}, `"--spool-after" flag: must be between 1ms and 1m0s`},
		{nil, []string{"--spool-max-messages", "0"}, `"--spool-max-messages" flag: must be between 1 and`},
		{nil, []string{"--spool-after", "2s"}, "--spool-after is a setting of the spool, and there is no --spool"},
		{[]string{"HOOKBRIDGE_SPOOL_MAX_MESSAGES=5"}, nil, "--spool-max-messages is a setting of the spool, and there is no --spool"},
	}
	for _, tt := range tests {
		args := append([]string{"ingress", "--queue", queue, "--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
			"--insecure-allow-unauthenticated"}, tt.args...)
		_, stderr, code := runBinary(t, append(os.Environ(), tt.env...), args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want exit 2 mentioning %q", tt.env, tt.args, code, stderr, tt.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused starts left %d files behind, the first %s", len(entries), entries[0].Name())
	}
}
