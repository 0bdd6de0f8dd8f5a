// Package testlog is a log sink for tests: a buffer that slog handlers, or
// a child process's stderr, write to from many goroutines, and that the
// test reads back as text or as JSON records.
//
//	logs := &testlog.Buffer{}
//	log := slog.New(slog.NewJSONHandler(logs, nil))
//	...
//	if !strings.Contains(logs.String(), `"event_id":"evt-1"`) { ... }
//	recs := logs.Records("delivery failed") // JSON records whose msg contains it
package testlog

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Buffer collects what is written to it; it is safe for concurrent use.
// The zero value is an empty buffer.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Records decodes the lines written by a JSON handler and returns the
// records whose message contains msg, in order. Lines that are not JSON
// objects with a string "msg" are skipped.
func (b *Buffer) Records(msg string) []map[string]any {
	var out []map[string]any
	for line := range strings.Lines(b.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if m, ok := rec["msg"].(string); ok && strings.Contains(m, msg) {
			out = append(out, rec)
		}
	}
	return out
}
