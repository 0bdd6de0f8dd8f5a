package tracing

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestErrorLogIsRateLimited: a collector that stays down fills no log: one
// line a minute, counting the failures left out.
func TestErrorLogIsRateLimited(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	h := &errorLog{log: slog.New(slog.NewTextHandler(&logs, nil))}
	for range 5 {
		h.Handle(errors.New("connection refused"))
	}
	if n := strings.Count(logs.String(), "exporting spans failed"); n != 1 {
		t.Fatalf("%d lines for 5 failures within a minute, want 1:\n%s", n, logs.String())
	}
	h.mu.Lock()
	h.last = h.last.Add(-errorLogEvery - time.Second) // a minute later
	h.mu.Unlock()
	h.Handle(errors.New("connection refused"))
	if !strings.Contains(logs.String(), "failures_not_logged=4") {
		t.Errorf("the next line does not count the 4 left out:\n%s", logs.String())
	}
}
