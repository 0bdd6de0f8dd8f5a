package sqlite_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// The queue's instruments count what it does: every acknowledged send waits
// for a timed fsync, the background checkpoints are counted and timed by
// mode (a log grown past its bound is restarted), and a message stored
// straight in the dead-letter queue is counted by its reason.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	q := sqlitetest.Open(t, sqlite.Config{Metrics: sqlite.NewMetrics(reg)})
	ctx := context.Background()

	if err := q.SendBatch(ctx, []relay.Message{{ID: "m1", Body: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	if n := metrictest.SampleCount(t, reg, "hookbridge_queue_fsync_duration_seconds"); n < 1 {
		t.Errorf("fsyncs timed after an acknowledged send: %d, want at least 1", n)
	}

	if err := q.SendBatch(ctx, []relay.Message{{ID: "bad", Body: []byte(`{}`), DeadLetterReason: relay.ReasonMalformedEvent, DeadLetterDescription: "not an event"}}); err != nil {
		t.Fatal(err)
	}
	if n := metrictest.Value(t, reg, "hookbridge_queue_dead_lettered_total", "reason", relay.ReasonMalformedEvent); n != 1 {
		t.Errorf("dead-lettered as %s: %v, want 1", relay.ReasonMalformedEvent, n)
	}

	testwait.Until(t, 10*time.Second, "a timed passive checkpoint", func() bool {
		return metrictest.SampleCount(t, reg, "hookbridge_queue_checkpoint_duration_seconds", "mode", "passive") >= 1
	})
	if n := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "passive", "result", "ok"); n < 1 {
		t.Errorf("passive checkpoints counted: %v, want at least 1", n)
	}
	if b := metrictest.Value(t, reg, "hookbridge_queue_wal_bytes"); b <= 0 {
		t.Errorf("hookbridge_queue_wal_bytes = %v after commits and a checkpoint, want the log's size", b)
	}

	// Over 4 MiB of frames: the next checkpoint restarts the log.
	body := []byte(`{"pad":"` + strings.Repeat("x", 64<<10) + `"}`)
	for i := range 6 {
		batch := make([]relay.Message, 16)
		for j := range batch {
			batch[j] = relay.Message{ID: fmt.Sprintf("big-%d-%d", i, j), Body: body}
		}
		if err := q.SendBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, 10*time.Second, "a timed restarting checkpoint", func() bool {
		return metrictest.SampleCount(t, reg, "hookbridge_queue_checkpoint_duration_seconds", "mode", "restart") >= 1
	})
	if n := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "restart", "result", "ok"); n < 1 {
		t.Errorf("restarting checkpoints counted: %v, want at least 1", n)
	}
}
