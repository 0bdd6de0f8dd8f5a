package testlog_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/hookbridge/hookbridge/internal/testlog"
)

// TestConcurrentWriters: loggers with handlers of their own (as separate
// parts of a test have) write into one buffer from many goroutines while
// it is read (run with -race), and String returns every line.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	logs := &testlog.Buffer{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			log := slog.New(slog.NewTextHandler(logs, nil))
			for j := range 50 {
				log.Info("line", "writer", i, "n", j)
				_ = logs.String()
			}
		})
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "msg=line"); n != 8*50 {
		t.Errorf("%d lines, want %d", n, 8*50)
	}
}

func TestRecords(t *testing.T) {
	t.Parallel()
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	log.Info("delivery failed; will retry", "event_id", "a")
	log.Warn("delivery timeout", "event_id", "b")
	log.Info("delivery failed; will retry", "event_id", "c")
	fmt.Fprintln(logs, "not JSON")
	fmt.Fprintln(logs, `{"no":"msg"}`)
	for _, tt := range []struct {
		msg  string
		want []string // event ids
	}{
		{"will retry", []string{"a", "c"}},
		{"timeout", []string{"b"}},
		{"delivery", []string{"a", "b", "c"}},
		{"absent", nil},
	} {
		var got []string
		for _, r := range logs.Records(tt.msg) {
			got = append(got, r["event_id"].(string))
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("Records(%q): %v, want %v", tt.msg, got, tt.want)
		}
	}
}
